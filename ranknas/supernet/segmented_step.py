"""A segmented training step with no autograd between segments: fixed buffers join them.

:class:`~ranknas.supernet.segmented.SegmentedProgram` runs a path as a chain of (block, op,
layer) segments under autograd. Captured with ``torch.cuda.make_graphed_callables``, each
segment copied every input into its graph's static buffers, concatenated all its candidate
sources to gather its merged input, and autograd walked ~40 graphed nodes and ~110 gradient
accumulations per step on the host. Here the segments meet in buffers at fixed addresses:

- **forms**: per kind, one buffer holding the padded form of every source that some port
  reads as that kind, side by side (``[B, sum of bounds + 1]`` features or ``[B, ... + 1,
  E]`` fields; the last column stays zero). The inputs are written into it at the start of a
  step, and a block's output segment writes (*publishes*) its output into its block's range.
- **merged inputs** are gathered straight from a kind's buffer (the candidates of a port need
  no concatenation), and the gradient of a merged input is added straight back into the
  gradient buffer of that kind (same layout), at the gathered columns only;
- a stacked layer reads the previous layer's output where that layer's graph left it, and
  writes that layer's output gradient into the layer's own buffer;
- **fixed widths halve to fit** (``halvings``): a merged input runs at its bound or at half
  or a quarter of it, and a :attr:`~ranknas.supernet.masked_base.MaskedOp.sizable` op
  (linear-3d, transformer, the dense ops) at fewer fields or features, whichever holds the
  path's width: most paths are far narrower than the widest; the widths are rounded up to
  8 columns (cuBLAS's aligned GEMMs);
- a block publishes only its output's width and zeroes the gradient of that range; readers
  never read past what the same step published, so no buffer is zeroed whole;
- an op's branch flags (skip a projection, ...) are part of a variant's key, so a variant
  computes only the side its flag takes (:class:`~ranknas.supernet.masked_base.FixedPath`)
  where the masked execution computes both and blends them;
- a block that only concatenates (NASRec's ``dense_in`` / ``sparse_in``) runs no segment:
  its readers gather its merged input themselves
  (:func:`~ranknas.supernet.segmented_forms.pass_through`).

The buffers' layout is in :mod:`ranknas.supernet.segmented_forms`, a segment variant's run in
:mod:`ranknas.supernet.segment_run`.

Each segment is captured once per variant (is it its block's output, its fixed widths, its
branches), at the batch size of the first step: one forward graph (gathers, op, publishing)
and one backward graph (``torch.autograd.grad`` of the op, the input gradients into the
gradient buffers, and the dense optimizer update of the op's parameters, which no other
segment reads). A layer's variants share one memory pool, and a variant keeps no autograd
graph once captured (:meth:`SegmentedStep.pool`). The logit head includes the loss. A step is
then: copy the inputs, replay the forward graphs in path order and the backward graphs in
reverse, and return the loss and the gradient of the embedding rows (whose sparse update
stays outside).
Without graphs (the CPU, or another batch size) the same functions run eagerly, so the CPU
tests check this module's data flow.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from ranknas.supernet.masked import _PREV, _Port
from ranknas.supernet.masked_base import aligned
from ranknas.supernet.masked_path import PathTensors
from ranknas.supernet.segment_run import SegmentRun
from ranknas.supernet.segmented import HEAD, Source, segmented
from ranknas.supernet.segmented_forms import Buffers, FormLayout
from ranknas.supernet.supernet import Supernet

__all__ = ["SegmentedStep", "Update"]

#: Applies the optimizer to ``(params, grads)`` in place (captured into a backward graph).
Update = Callable[[list[torch.Tensor], list[torch.Tensor]], None]
_INPUTS = ("dense", "sparse")


class SegmentedStep:
    """Forward, backward and dense update of one path, segment by segment (module
    docstring).

    Args:
        supernet: The supernet to train (in place).
        update: The dense optimizer, called with a segment's parameters and gradients (inside
            its backward graph when captured).
        cuda_graphs: Capture each segment variant on first use (CUDA only), at the batch size
            of the first step; other sizes run eagerly.
        autocast: A context for the forward ops (bf16 autocast, or a null context).
        halvings: How many times the fixed width of a merged input, and of a sizable op's
            (:attr:`~ranknas.supernet.masked_base.MaskedOp.sizable`) output, may halve to
            fit the path's (0: always the widest). Each halving is one more variant of a
            segment to capture, and cuts the gathers, matmuls, attention and gradient
            scatters of narrow paths.
    """

    def __init__(self, supernet: Supernet, update: Update, cuda_graphs: bool = False,
                 autocast: Callable[[], AbstractContextManager] | None = None,
                 halvings: int = 2) -> None:
        self.supernet, self.update, self.cuda_graphs = supernet, update, cuda_graphs
        self.autocast = autocast or nullcontext
        self.halvings = halvings
        self.prog = segmented(supernet)
        program = self.prog.program
        self.dim = program.dim
        self.forms = FormLayout(self.prog)
        self.port_index: dict[int, torch.Tensor] = {}
        self._runs: dict[tuple, SegmentRun] = {}
        self._buffers: dict[int, Buffers] = {}
        self._storage: int | None = None
        self.graph_batch: int | None = None  # the batch size segments are captured at
        self.captured = 0  # segment variants captured so far
        self._pools: dict[tuple, tuple[int, int]] = {}

    def pool(self, key: tuple) -> tuple[int, int]:
        """The CUDA-graph memory pool of layer ``key``'s variants.

        A path runs a layer once, so two variants of one layer never replay in the same
        step and can share memory: the graphs hold about one variant per layer (~590
        graphs for ~85 layers of ``nasrec_full``). Layers never share: another layer's
        graphs replay between a layer's forward and backward.
        """
        handle = self._pools.get(key)
        if handle is None:
            handle = self._pools[key] = torch.cuda.graph_pool_handle()
        return handle

    def fit(self, width: int, bound: int) -> int:
        """The fixed width of a merged input ``width`` wide: ``bound`` (from 64 rounded up
        to 8 columns: :func:`~ranknas.supernet.masked_base.aligned`) halved while it still
        holds ``width``, at most :attr:`halvings` times."""
        size = aligned(bound)
        for _ in range(self.halvings):
            half = -(-size // 2)
            if bound >= 64:
                half = -(-half // 8) * 8
            if half < max(width, 1) or half >= size:
                break
            size = half
        return size

    def _sizes(self, ports: dict[str, _Port], widths: tuple[int, ...],
               written: dict[Source, int], joint: bool = False
               ) -> tuple[tuple[int, int, bool], ...]:
        """Per port: (the fixed width of its input, the columns read from its source's form:
        never past what this step wrote there, whether it is connected). ``joint``: every port
        holds the widest input (an op that pads its inputs to one width: fewer variants to
        capture).

        A port with one source is connected or not per variant, so its input needs no 0/1
        multiply (one pass forward and one backward); a gathered port reads the zero column
        where it is absent."""
        present = [width > 0 for width in widths]
        if joint:
            widths = (max(widths),) * len(widths)
        sizes = []
        for port, width, on in zip(ports.values(), widths, present, strict=True):
            p = port.port
            if port.cands == (_PREV,):  # a stacked layer's previous layer: always there
                sizes.append((p.bound, 0, True))
                continue
            size = self.fit(width, p.bound)
            if port.gather is not None:  # the gathered index holds the absence
                sizes.append((size, 0, True))
            elif port.cands[0] in self.forms.aliases:
                sizes.append((size, 0, on))
            else:
                source = (port.cands[0], p.kind)
                read = min(size, written.get(source, self.forms.ranges[source][2]))
                sizes.append((size, read, on))
        return tuple(sizes)

    def __call__(self, dense: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor,
                 path: PathTensors) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of ``path`` on dense ``[B, D]``, looked-up rows ``emb [B, F, E]`` and
        ``labels [B]``: updates the dense parameters; returns the loss (0-dim, a new
        tensor) and the gradient of ``emb`` (``[B, F, E]``)."""
        storage = self.supernet.head_bias.data_ptr()
        if storage != self._storage:  # moved (.to()): graphs would read the old memory
            self._runs.clear()
            self._pools.clear()
            self._buffers.clear()
            self.port_index = {k: v.to(emb.device) for k, v in self.forms.port_index.items()}
            self.graph_batch, self._storage = None, storage
        size = dense.shape[0]
        if self.graph_batch is None:
            self.graph_batch = size
        graphed = self.cuda_graphs and size == self.graph_batch
        buf = self._buffers.get(size)
        if buf is None:
            buf = self._buffers[size] = Buffers(self.forms.widths, self.dim, emb)
        self.prog.current.load(path)
        # forms need no zeroing: a step reads only what it published, or multiplies the form
        # of a block it skips by 0 (the last step's, finite: a non-finite loss stops); a
        # block's gradients are zeroed where it publishes
        buf.labels.copy_(labels)
        emb = emb.detach().requires_grad_()
        inputs = {"dense": dense, "sparse": emb}
        pubs = [(self.forms.published(inputs[key], key, kind), (key, kind))
                for key in _INPUTS for kind in self.forms.kinds.get(key, ())]
        with torch.no_grad():
            for grads in buf.grads.values():  # the zero column's: padding's sink
                grads.narrow(1, grads.shape[1] - 1, 1).zero_()
        for pub, source in pubs:
            self.forms.write_form(buf, *source, pub)
        written: dict[Source, int] = {source: pub.shape[1] for pub, source in pubs}
        runs, prev = [], {}
        for node in path.nodes:
            if node.block in self.forms.aliases:  # its readers gather its input themselves
                continue
            key = (node.block, node.op, node.k)
            layer = self.prog.layers[key]
            sizes = self._sizes(layer.ports, node.widths, written, layer.op.joint)
            out = (self.fit(node.width, layer.op.out_size)
                   if layer.op.sizable and node.width else None)
            run = self._run(key, node.is_out, buf, prev.get(node.block), graphed, sizes,
                            None if out == layer.op.out_size else out, node.branches)
            run.forward()
            written.update(((node.block, kind), w) for kind, w in run.written.items())
            runs.append(run)
            prev[node.block] = run
        head_port = self.prog.program.head
        head = self._run(HEAD, True, buf, None, graphed,
                         self._sizes({"head": head_port}, (path.head_width,), written), None)
        head.forward()
        loss = head.out.detach().clone()
        head.backward()
        for run in reversed(runs):
            run.backward()
        sparse = [(pub, self.forms.grad_range(buf, *s).narrow(1, 0, pub.shape[1]))
                  for pub, s in pubs if s[0] == "sparse"]
        if not sparse:  # no port reads the embeddings
            return loss, torch.zeros_like(emb)
        (grad,) = torch.autograd.grad([p for p, _ in sparse], emb, [g for _, g in sparse])
        return loss, grad

    def _run(self, key: tuple, is_out: bool, buf: Buffers, prev: SegmentRun | None,
             graphed: bool, sizes: tuple[tuple[int, int, bool], ...], out: int | None,
             branches: tuple[bool, ...] = ()) -> SegmentRun:
        # a stacked layer's graph reads its previous layer's output where that run keeps it
        cache = (key, is_out, buf.labels.shape[0], graphed, sizes, out, branches,
                 None if prev is None else prev.cache)
        run = self._runs.get(cache)
        if run is None:
            run = self._runs[cache] = SegmentRun(self, key, is_out, buf, prev, graphed, sizes,
                                                 out, branches)
            run.cache = cache
        return run
