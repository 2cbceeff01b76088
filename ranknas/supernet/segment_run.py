"""One segment variant of a :class:`~ranknas.supernet.segmented_step.SegmentedStep`: its
forward (gathers, op, publishing) and backward (input gradients into the gradient buffers,
the dense update), run eagerly or captured once as two CUDA graphs and replayed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ranknas.spaces.ops import Kind
from ranknas.supernet.column_index import gather_cols, scatter_add_cols_
from ranknas.supernet.masked import _PREV, _Port
from ranknas.supernet.masked_base import FixedPath, Path, as_kind, resize
from ranknas.supernet.segmented import HEAD
from ranknas.supernet.segmented_forms import Buffers

if TYPE_CHECKING:
    from ranknas.supernet.segmented_step import SegmentedStep

__all__ = ["SegmentRun"]

_WARMUP = 2  # eager runs before a capture (Triton compiles, cuBLAS workspaces)


class SegmentRun:
    """One segment variant (layer ``key``, block output or not) at one batch size: its
    forward and backward, eager or replayed from CUDA graphs."""

    def __init__(self, step: SegmentedStep, key: tuple, is_out: bool, buf: Buffers,
                 prev: SegmentRun | None, graphed: bool, sizes: tuple[tuple[int, int, bool], ...],
                 out_size: int | None, branches: tuple[bool, ...] = ()) -> None:
        self.step, self.key, self.is_out, self.buf, self.prev = step, key, is_out, buf, prev
        self.out_size = out_size  # the op's fixed output size, if not its widest
        self.head = key == HEAD
        if self.head:
            self.ports = {"head": step.prog.program.head}
            self.params = [step.supernet.head_weight, step.supernet.head_bias]
        else:
            self.layer = step.prog.layers[key]
            self.ports, self.params = self.layer.ports, list(self.layer.op.m.parameters())
        # the op's branch flags, fixed for this variant: only their taken sides run
        self.fixed = dict(zip(self.layer.op.branches, branches, strict=True)) if branches else {}
        self.field_major = frozenset() if self.head else self.layer.op.field_major(self.fixed)
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
            if name in self.field_major:  # [B, E, n]: the op's transpose is a view
                x = gather_cols(self.buf.forms[p.kind], index, transposed=True)
                x.requires_grad_()
                return x.transpose(1, 2), x, ("gather", p.kind, index, True)
            x = gather_cols(self.buf.forms[p.kind], index).requires_grad_()
            return x, x, ("gather", p.kind, index, False)
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
        if self.fixed:
            path = FixedPath(path, self.fixed)
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
            elif where[0] == "gather":  # padding's gradient would land on the zero column
                dst = self.buf.grads[where[1]]
                scatter_add_cols_(dst, where[2], g, skip=dst.shape[1] - 1, transposed=where[3])
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
        # the warm-up's autograd graph would keep its parameters' AccumulateGrad nodes, made
        # on the side stream, alive into the capture (PyTorch warns of a stream mismatch)
        del leaves, outputs, grads_in
        self.out = None
        torch.cuda.current_stream().wait_stream(side)
        # kept graphs can be joined into a step's one launch (GraphChain)
        keep = self.step.chain is not None
        fwd, bwd = (torch.cuda.CUDAGraph(keep_graph=keep) for _ in range(2))
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
