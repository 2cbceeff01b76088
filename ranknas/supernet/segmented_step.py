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
- a block that only concatenates (NASRec's ``dense_in`` / ``sparse_in``) runs no segment:
  its readers gather its merged input themselves
  (:func:`~ranknas.supernet.segmented_forms.pass_through`).

The buffers' layout is in :mod:`ranknas.supernet.segmented_forms`.

Each segment is captured once per variant (is it its block's output, its fixed widths), at
the batch size of the first step: one forward graph (gathers, op, publishing) and one backward
graph (``torch.autograd.grad`` of the op, the input gradients into the gradient buffers, and
the dense optimizer update of the op's parameters, which no other segment reads). A layer's
variants share one memory pool, and a variant keeps no autograd graph once captured
(:meth:`SegmentedStep.pool`). The logit head includes the loss. A step is then: copy the
inputs, replay the forward graphs in path order and the backward graphs in reverse, and
return the loss and the gradient of the embedding rows (whose sparse update stays outside).
Without graphs (the CPU, or another batch size) the same functions run eagerly, so the CPU
tests check this module's data flow.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from ranknas.spaces.ops import Kind
from ranknas.supernet.masked import _PREV, PathTensors, _Port
from ranknas.supernet.masked_base import Path, aligned, as_kind, resize
from ranknas.supernet.segmented import HEAD, Source, segmented
from ranknas.supernet.segmented_forms import Buffers, FormLayout
from ranknas.supernet.supernet import Supernet

__all__ = ["SegmentedStep", "Update"]

#: Applies the optimizer to ``(params, grads)`` in place (captured into a backward graph).
Update = Callable[[list[torch.Tensor], list[torch.Tensor]], None]
_INPUTS = ("dense", "sparse")
_WARMUP = 2  # eager runs before a capture (Triton compiles, cuBLAS workspaces)


class _Run:
    """One segment variant (layer ``key``, block output or not) at one batch size: its
    forward and backward, eager or replayed from CUDA graphs."""

    def __init__(self, step: SegmentedStep, key: tuple, is_out: bool, buf: Buffers,
                 prev: _Run | None, graphed: bool, sizes: tuple[tuple[int, int, bool], ...],
                 out_size: int | None) -> None:
        self.step, self.key, self.is_out, self.buf, self.prev = step, key, is_out, buf, prev
        self.out_size = out_size  # the op's fixed output size, if not its widest
        self.head = key == HEAD
        if self.head:
            self.ports = {"head": step.prog.program.head}
            self.params = [step.supernet.head_weight, step.supernet.head_bias]
        else:
            self.layer = step.prog.layers[key]
            self.ports, self.params = self.layer.ports, list(self.layer.op.m.parameters())
        # per port: (its input's width, the columns read from a source's form, connected)
        self.sizes = dict(zip(self.ports, sizes, strict=True))
        self.kinds = step.forms.kinds.get(key[0], ()) if is_out and not self.head else ()
        self.written: dict[Kind, int] = {}  # the width published per kind (fixed per run)
        self.cache: tuple = ()  # its key in SegmentedStep._runs
        self.out: torch.Tensor | None = None
        self.grad_out: torch.Tensor | None = None  # d loss / d out, for a non-output layer
        self.graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph | None] | None = None
        if graphed:
            self._capture()

    def _input(self, name: str, port: _Port,
               path: Path) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """(the op's input, the leaf autograd differentiates, where its gradient goes)."""
        p, step = port.port, self.step
        size, read, present = self.sizes[name]
        alias = step.forms.aliases.get(port.cands[0])
        if not present:  # unconnected: the op reads zeros, and no gradient goes back
            form = self.buf.forms[p.kind]
            x = form.new_zeros(form.shape[0], size, *form.shape[2:])
            return x, x, ("none",)
        if port.gather is not None or alias is not None:
            # gathered from the kind's buffer (no concatenation); a pass-through concat's
            # readers gather its merged input where it would have
            gather = port if alias is None else alias
            cols = step.port_index[id(gather)]  # the zero column last
            index = cols.index_select(0, gather.gather.view(path)[:size])
            x = self.buf.forms[p.kind].index_select(1, index).requires_grad_()
            return x, x, ("gather", p.kind, index)
        if port.cands == (_PREV,):
            leaf = self.prev.out.detach().requires_grad_()
            where: tuple = ("prev",)
        else:
            kind, start, _ = step.forms.ranges[(port.cands[0], p.kind)]
            # .data, not .detach(): a view with a version counter of its own, or the source's
            # range, saved for this op's backward, would count as modified when a later block
            # of the step publishes into another range of the same buffer (nothing writes
            # this range again before the backward: a block publishes once, before readers)
            leaf = self.buf.forms[kind].narrow(1, start, read).data
            leaf.requires_grad_(port.cands[0] != "dense")
            where = ("range", kind, start, read)
        return resize(as_kind(leaf, p.kind, step.dim), size), leaf, where

    def _forward(self) -> tuple[list, list, list, list]:
        """The segment: (leaves, where their gradients go, what to differentiate, its
        incoming gradients)."""
        path = self.step.prog.current.path
        with self.step.autocast():
            ins = {name: self._input(name, port, path) for name, port in self.ports.items()}
            xs = {name: x for name, (x, _, _) in ins.items()}
            leaves = [leaf for _, leaf, _ in ins.values()]
            wheres = [where for _, _, where in ins.values()]
            if self.head:
                head = self.ports["head"].port
                weight = head.take(self.params[0], 1, path, xs["head"].shape[-1])
                logits = F.linear(xs["head"], weight, self.params[1]).squeeze(-1)
                self.out = F.binary_cross_entropy_with_logits(logits.float(), self.buf.labels)
                return leaves, wheres, [self.out], [self.buf.one]
            out = self.out = (self.layer.op.forward(xs, path) if self.out_size is None else
                              self.layer.op.forward(xs, path, self.out_size))
            if self.kinds:
                pubs = [self.step.forms.published(out.float(), self.key[0], kind)
                        for kind in self.kinds]
                self.written = {kind: pub.shape[1]
                                for kind, pub in zip(self.kinds, pubs, strict=True)}
                return leaves, wheres, pubs, [
                    self.step.forms.grad_range(self.buf, self.key[0], kind).narrow(1, 0, width)
                    for kind, width in self.written.items()]
        if self.grad_out is None:
            self.grad_out = torch.zeros_like(out)
        return leaves, wheres, [out], [self.grad_out]

    def _publish(self, outputs: list[torch.Tensor]) -> None:
        """Write the output's forms, and zero their gradients (the step zeroes no buffer
        whole: readers touch only what was published in the same step)."""
        if not self.kinds:  # not a block's output: the next layer reads self.out
            return
        for kind, pub in zip(self.kinds, outputs, strict=True):
            self.step.forms.write_form(self.buf, self.key[0], kind, pub)

    def _grads(self, leaves: list[torch.Tensor], outputs: list, grads_in: list) -> tuple:
        wanted = [x for x in leaves if x.requires_grad] + self.params
        if not self._differentiable(leaves, outputs):
            return (None,) * len(wanted)
        return torch.autograd.grad(outputs, wanted, grads_in, allow_unused=True)

    def _differentiable(self, leaves: list[torch.Tensor], outputs: list) -> bool:
        """Whether the backward has work (a concat of the dense inputs has none: its graph
        would be empty)."""
        return (any(x.requires_grad for x in leaves) or bool(self.params)) and any(
            o.requires_grad for o in outputs)

    def _apply(self, leaves: list[torch.Tensor], wheres: list[tuple], grads: tuple) -> None:
        """Input gradients into the gradient buffers (or the previous layer's); the
        optimizer on the parameters."""
        n = 0
        for leaf, where in zip(leaves, wheres, strict=True):
            if not leaf.requires_grad:
                continue
            g, n = grads[n], n + 1
            if g is None:
                continue
            if where[0] == "prev":
                self.prev.grad_out.copy_(g)
            elif where[0] == "gather":  # padding lands on the zero column's gradient
                self.buf.grads[where[1]].index_add_(1, where[2], g)
            else:
                self.buf.grads[where[1]].narrow(1, where[2], where[3]).add_(g)
        pairs = [(p, g) for p, g in zip(self.params, grads[n:], strict=True) if g is not None]
        if pairs:
            self.step.update([p for p, _ in pairs], [g for _, g in pairs])

    def _capture(self) -> None:
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(_WARMUP):  # no side effects: no publishing, no update
                leaves, _, outputs, grads_in = self._forward()
                self._grads(leaves, outputs, grads_in)
        torch.cuda.current_stream().wait_stream(side)
        fwd, bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        pool = self.step.pool(self.key)
        with torch.cuda.graph(fwd, pool=pool):
            leaves, wheres, outputs, grads_in = self._forward()
            self._publish(outputs)
        if self._differentiable(leaves, outputs):  # else an empty graph, and a warning
            with torch.cuda.graph(bwd, pool=pool):
                self._apply(leaves, wheres, self._grads(leaves, outputs, grads_in))
        else:
            bwd = None
        self.graphs = (fwd, bwd)
        self.step.captured += 1
        self._release()

    def _release(self) -> None:
        """Drop the output's autograd graph after the backward: it would keep the saved
        tensors of the nodes the backward skipped alive, per variant. A published output is
        read by nobody, so its memory goes back to the layer's pool."""
        self.out = None if self.kinds else self.out.detach()

    def forward(self) -> None:
        if self.graphs is not None:
            self.graphs[0].replay()
            return
        self._saved = self._forward()
        self._publish(self._saved[2])

    def backward(self) -> None:
        if self.graphs is not None:
            if self.graphs[1] is not None:
                self.graphs[1].replay()
            return
        leaves, wheres, outputs, grads_in = self._saved
        del self._saved
        self._apply(leaves, wheres, self._grads(leaves, outputs, grads_in))
        self._release()


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
        self._runs: dict[tuple, _Run] = {}
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
                            None if out == layer.op.out_size else out)
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

    def _run(self, key: tuple, is_out: bool, buf: Buffers, prev: _Run | None,
             graphed: bool, sizes: tuple[tuple[int, int, bool], ...], out: int | None) -> _Run:
        # a stacked layer's graph reads its previous layer's output where that run keeps it
        cache = (key, is_out, buf.labels.shape[0], graphed, sizes, out,
                 None if prev is None else prev.cache)
        run = self._runs.get(cache)
        if run is None:
            run = self._runs[cache] = _Run(self, key, is_out, buf, prev, graphed, sizes, out)
            run.cache = cache
        return run
