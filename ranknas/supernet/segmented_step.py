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
stays outside). A step prepared one step ahead (:meth:`SegmentedStep.prepare`: the trainer
does, with a path prefetch worker) launches those graphs as one graph instead, joined in a
worker thread (:mod:`~ranknas.supernet.graph_chain`).
Without graphs (the CPU, or another batch size) the same functions run eagerly, so the CPU
tests check this module's data flow.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext

import torch

from ranknas.supernet import graph_chain
from ranknas.supernet.graph_chain import GraphChain, GraphChainError
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
        chain_graphs: With ``cuda_graphs``, a step prepared ahead (:meth:`prepare`) launches
            its graphs joined into one (:mod:`~ranknas.supernet.graph_chain`): no idle GPU
            between the segments' graphs. Default: ``graph_chain.ENABLED``.
    """

    def __init__(self, supernet: Supernet, update: Update, cuda_graphs: bool = False,
                 autocast: Callable[[], AbstractContextManager] | None = None,
                 halvings: int = 2, chain_graphs: bool | None = None) -> None:
        self.supernet, self.update, self.cuda_graphs = supernet, update, cuda_graphs
        if chain_graphs is None:
            chain_graphs = graph_chain.ENABLED
        self.chain_graphs = chain_graphs and cuda_graphs
        self.chain: GraphChain | None = None  # opened at the first captured step
        # prepared steps, oldest first: [path, its runs, the head's run, its graphs in launch
        # order, or once submitted (after the step before is launched) their joined future]
        self._ahead: list[list] = []
        self._published: dict[Source, int] | None = None  # the inputs' widths, per form
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
        self.joined = 0  # steps launched as one joined graph
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
            self._drop_ahead()
            self._runs.clear()
            self._pools.clear()
            self._buffers.clear()
            self.port_index = {k: v.to(emb.device) for k, v in self.forms.port_index.items()}
            self.graph_batch, self._storage = None, storage
        size = dense.shape[0]
        if self.graph_batch is None:
            self.graph_batch = size
        graphed = self.cuda_graphs and size == self.graph_batch
        if graphed and self.chain_graphs and self.chain is None:
            self._open_chain()
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
        self._published = {source: pub.shape[1] for pub, source in pubs}
        mine = next((i for i, a in enumerate(self._ahead) if a[0] is path), None)
        launched = False
        if mine is not None and graphed:
            _, runs, head, joined = self._ahead.pop(mine)
            self._drop_ahead(mine)  # those prepared before it: their steps are not coming
            launched = self._launch(self._submitted(joined))
            if not launched:  # joining failed: replay the forwards (and backwards below)
                for seg in [*runs, head]:
                    seg.forward()
        else:
            runs, head = self._plan(path, buf, graphed, run=True)
        if not launched:
            for seg in [head, *reversed(runs)]:
                seg.backward()
        # join the next step's graphs now: while the GPU runs this step's, the host waits on
        # the driver's lock for the joining without leaving the GPU idle
        for ahead in self._ahead:
            ahead[3] = self._submitted(ahead[3])
        loss = head.out.detach().clone()
        sparse = [(pub, self.forms.grad_range(buf, *s).narrow(1, 0, pub.shape[1]))
                  for pub, s in pubs if s[0] == "sparse"]
        if not sparse:  # no port reads the embeddings
            return loss, torch.zeros_like(emb)
        (grad,) = torch.autograd.grad([p for p, _ in sparse], emb, [g for _, g in sparse])
        return loss, grad

    def prepare(self, path: PathTensors) -> None:
        """Plan a later step of ``path`` now, and start joining its graphs into one launch
        (:class:`~ranknas.supernet.graph_chain.GraphChain`) once this step is launched. Only
        the step of this ``path`` (the same object) at the captured batch size uses the plan;
        a path with a segment variant not captured yet is not planned (its step captures it,
        and replays the graphs one by one). At most two steps are held ahead."""
        if len(self._ahead) >= 2:
            self._drop_ahead(1)
        if self.chain is None or self._published is None:
            return
        found = self._plan(path, self._buffers[self.graph_batch], True, run=False)
        if found is not None:
            runs, head = found
            graphs = [r.graphs[0] for r in runs] + [g for g in head.graphs if g is not None]
            graphs += [r.graphs[1] for r in reversed(runs) if r.graphs[1] is not None]
            self._ahead.append([path, runs, head, graphs])

    def _plan(self, path: PathTensors, buf: Buffers, graphed: bool, run: bool
              ) -> tuple[list[SegmentRun], SegmentRun] | None:
        """The path's segment runs and the head's, in forward order. ``run``: run each
        forward as it is found (capturing new variants); else only look the runs up (None
        if one is missing)."""
        written: dict[Source, int] = dict(self._published)
        runs, prev = [], {}
        for node in path.nodes:
            if node.block in self.forms.aliases:  # its readers gather its input themselves
                continue
            key = (node.block, node.op, node.k)
            layer = self.prog.layers[key]
            sizes = self._sizes(layer.ports, node.widths, written, layer.op.joint)
            out = (self.fit(node.width, layer.op.out_size)
                   if layer.op.sizable and node.width else None)
            seg = self._run(key, node.is_out, buf, prev.get(node.block), graphed, sizes,
                            None if out == layer.op.out_size else out, node.branches, run)
            if seg is None:
                return None
            if run:
                seg.forward()
            written.update(((node.block, kind), w) for kind, w in seg.written.items())
            runs.append(seg)
            prev[node.block] = seg
        head = self._run(HEAD, True, buf, None, graphed,
                         self._sizes({"head": self.prog.program.head}, (path.head_width,),
                                     written), None, (), run)
        if head is not None and run:
            head.forward()
        return None if head is None else (runs, head)

    def _launch(self, joined: Future) -> bool:
        """Launch a prepared step's joined graph; False if joining failed (the step replays
        its graphs one by one, and joining stops)."""
        try:
            self.chain.launch(joined.result(), torch.cuda.current_stream())
        except GraphChainError as exc:
            warnings.warn(f"segment graphs are replayed one by one from now on: {exc}",
                          RuntimeWarning, stacklevel=3)
            self._drop_ahead()
            self.chain, self.chain_graphs = None, False
            return False
        self.joined += 1
        return True

    def _open_chain(self) -> None:
        try:
            self.chain = GraphChain()
        except GraphChainError as exc:
            warnings.warn(f"segment graphs are replayed one by one: {exc}", RuntimeWarning,
                          stacklevel=3)
            self.chain_graphs = False

    def _submitted(self, joined: list | Future) -> Future:
        return self.chain.submit(joined) if isinstance(joined, list) else joined

    def _drop_ahead(self, count: int | None = None) -> None:
        """Forget the oldest ``count`` prepared steps (default all)."""
        for *_, joined in self._ahead[:count]:
            if isinstance(joined, Future):
                self.chain.discard(joined)
        del self._ahead[:count]

    def _run(self, key: tuple, is_out: bool, buf: Buffers, prev: SegmentRun | None,
             graphed: bool, sizes: tuple[tuple[int, int, bool], ...], out: int | None,
             branches: tuple[bool, ...] = (), create: bool = True) -> SegmentRun | None:
        # a stacked layer's graph reads its previous layer's output where that run keeps it
        cache = (key, is_out, buf.labels.shape[0], graphed, sizes, out, branches,
                 None if prev is None else prev.cache)
        run = self._runs.get(cache)
        if run is None and create:
            run = self._runs[cache] = SegmentRun(self, key, is_out, buf, prev, graphed, sizes,
                                                 out, branches)
            run.cache = cache
        return run
