"""Selected-op execution at fixed shapes: the path's (block, op, layer) segments, one by one.

The masked execution (:mod:`ranknas.supernet.masked`) runs *every* candidate op of every block
so that one graph fits every path; it pays 25-30x the FLOPs of an average path. The sliced
supernet runs only the path's ops, but at shapes that change with every path, so each step
is thousands of eager launches. This module takes the middle road:

- each block runs only the op the path selects (and only its stacked layers that the path
  runs), exactly as the masked program computes it: the merged input gathered into a fixed
  ``[B, bound]`` slot tensor, widest weights with width masks, on the supernet's own
  parameters;
- so one (block, op, layer) *segment* has the same kernels at the same shapes on every path
  it appears in: :class:`~ranknas.supernet.segmented_step.SegmentedStep` captures each one
  once, forward and backward, as CUDA graphs, and trains with them;
- the path's per-architecture values (masks, gather indices) live in two static buffers that
  every segment reads; a step copies the path into them once;
- a segment reads the *forms* of its candidate sources: a block's output brought to its
  natural padded size (:func:`publish`: a pad or a view).

A step's FLOPs are those of the path's ops at their widest (masked) shapes, not of every
candidate. ``segmented_forward(...) == supernet(dense, sparse, arch)`` and its gradients
(tests: random architectures of the built-in spaces). Gradients reach only the parameters of
the ops the path runs; the others keep ``grad = None``.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ranknas.spaces.architecture import Architecture
from ranknas.spaces.ops import Kind
from ranknas.supernet.masked import (
    _PREV,
    MaskedProgram,
    _Layer,
    _Port,
    per_supernet,
    program,
)
from ranknas.supernet.masked_base import as_kind, resize
from ranknas.supernet.masked_path import PathTensors
from ranknas.supernet.supernet import Supernet

__all__ = ["HEAD", "SegmentedProgram", "publish", "segmented", "segmented_forward"]

Source = tuple[str, Kind | None]  # (block key or "#prev", kind of the form read)
HEAD = ("#head",)  # the segment key of the logit head


class _PathBuffers:
    """The current path's ``floats`` / ``ints`` at fixed addresses (captured graphs read
    them)."""

    def __init__(self) -> None:
        self.floats: torch.Tensor | None = None
        self.ints: torch.Tensor | None = None

    def load(self, path: PathTensors) -> None:
        if self.floats is None or self.floats.device != path.floats.device:
            self.floats, self.ints = path.floats.clone(), path.ints.clone()
        else:
            self.floats.copy_(path.floats, non_blocking=True)
            self.ints.copy_(path.ints, non_blocking=True)

    @property
    def path(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.floats, self.ints


def _sources(ports: dict[str, _Port]) -> tuple[Source, ...]:
    seen: dict[Source, None] = {}
    for port in ports.values():
        kind = port.port.kind
        for cand in port.cands:
            seen[(cand, None) if cand == _PREV else (cand, kind)] = None
    return tuple(seen)


class _Segment(nn.Module):
    """One (block, op, layer) of a :class:`MaskedProgram` (or the logit head) as a module:
    ``forward(*forms) -> output`` over the padded forms of its candidate sources, in
    :attr:`sources` order. Its parameters are those of the op (the supernet's own)."""

    def __init__(self, prog: MaskedProgram, current: _PathBuffers, layer: _Layer | None,
                 supernet: Supernet) -> None:
        super().__init__()
        self.dim, self.current, self.layer = prog.dim, current, layer
        if layer is None:  # the head
            self.ports = {"head": prog.head}
            self.head_weight, self.head_bias = supernet.head_weight, supernet.head_bias
        else:
            self.ports = layer.ports
            self.op_module = layer.op.m  # registers the op's parameters
        self.sources = _sources(self.ports)

    def _input(self, port: _Port, vals: dict[Source, torch.Tensor],
               path: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        p = port.port
        if port.gather is None:
            src = vals[(_PREV, None)] if port.cands == (_PREV,) else vals[(port.cands[0],
                                                                            p.kind)]
            return resize(as_kind(src, p.kind, self.dim), p.bound) * port.present.view(path)
        parts = [vals[(c, p.kind)] for c in port.cands]
        parts.append(torch.zeros_like(parts[0].narrow(1, 0, 1)))
        return torch.cat(parts, dim=1).index_select(1, port.gather.view(path)[:p.bound])

    def forward(self, *forms: torch.Tensor) -> torch.Tensor:
        vals = dict(zip(self.sources, forms, strict=True))
        path = self.current.path
        xs = {name: self._input(port, vals, path) for name, port in self.ports.items()}
        if self.layer is not None:
            return self.layer.op.forward(xs, path)
        head = self.ports["head"].port
        return F.linear(xs["head"], head.take(self.head_weight, 1, path),
                        self.head_bias).squeeze(-1)


class SegmentedProgram:
    """Runs one supernet's paths segment by segment, eagerly, under autograd (see the module
    docstring); :class:`~ranknas.supernet.segmented_step.SegmentedStep` trains with the
    same segments, captured.

    Args:
        supernet: The supernet (its parameters are used in place).
    """

    def __init__(self, supernet: Supernet) -> None:
        self.program = program(supernet)
        self.current = _PathBuffers()
        self.layers = {(block, op, k): layer for block, chains in self.program.blocks
                       for op, chain in chains.items() for k, layer in enumerate(chain)}
        self._segments: dict[tuple, _Segment] = {}
        self._zeros: dict[tuple, torch.Tensor] = {}

    def encode(self, supernet: Supernet, arch: Architecture) -> PathTensors:
        """``arch``'s path tensors and the layers it runs (the masked encoding, cached)."""
        return self.program.encode(supernet, arch)

    def segment(self, key: tuple, supernet: Supernet) -> _Segment:
        """The segment of layer ``key = (block, op, k)``, or of the head (``("#head",)``)."""
        seg = self._segments.get(key)
        if seg is None:
            seg = self._segments[key] = _Segment(self.program, self.current,
                                                 self.layers.get(key), supernet)
        return seg

    def _zero_form(self, key: str, kind: Kind, like: torch.Tensor) -> torch.Tensor:
        """The form of a block the path does not run: zeros (a leaf, so every segment sees
        the same ``requires_grad`` pattern)."""
        size = self.program.layout.bound(key, kind)
        shape = (like.shape[0], size) if kind is Kind.DENSE else (like.shape[0], size,
                                                                   self.program.dim)
        cache = (key, kind, like.shape[0], like.device, like.dtype)
        if cache not in self._zeros:
            self._zeros[cache] = torch.zeros(shape, dtype=like.dtype, device=like.device,
                                             requires_grad=True)
        return self._zeros[cache]

    def forward_embedded(self, supernet: Supernet, dense: torch.Tensor, emb: torch.Tensor,
                         path: PathTensors) -> torch.Tensor:
        """Logits ``[B]`` of ``path`` from dense ``[B, D]`` and looked-up embeddings
        ``emb [B, F, E]``."""
        self.current.load(path)
        outs: dict[str, torch.Tensor] = {"dense": dense, "sparse": emb}
        forms: dict[Source, torch.Tensor] = {}

        def form(source: Source, prev: torch.Tensor | None) -> torch.Tensor:
            key, kind = source
            if key == _PREV:
                return prev
            if source not in forms:
                out = outs.get(key)
                forms[source] = (self._zero_form(key, kind, dense) if out is None else
                                 publish(self.program, out, key, kind))
            return forms[source]

        prev: dict[str, torch.Tensor] = {}
        for node in path.nodes:
            seg = self.segment((node.block, node.op, node.k), supernet)
            out = seg(*[form(s, prev.get(node.block)) for s in seg.sources])
            prev[node.block] = out
            if node.is_out:
                outs[node.block] = out
        head = self.segment(HEAD, supernet)
        return head(*[form(s, None) for s in head.sources])


def publish(prog: MaskedProgram, out: torch.Tensor, key: str, kind: Kind) -> torch.Tensor:
    """The padded form of block (or input) ``key``'s output ``out`` that ``kind`` ports
    read: ``[B, bound]`` features or ``[B, bound, E]`` fields."""
    return resize(as_kind(out, kind, prog.dim), prog.layout.bound(key, kind))


_SEGMENTED: weakref.WeakKeyDictionary[Supernet, SegmentedProgram] = weakref.WeakKeyDictionary()


def segmented(supernet: Supernet) -> SegmentedProgram:
    """The (cached) segmented program of ``supernet``."""
    return per_supernet(_SEGMENTED, supernet, SegmentedProgram)


def segmented_forward(supernet: Supernet, dense: torch.Tensor, sparse: torch.Tensor,
                      arch: Architecture) -> torch.Tensor:
    """Logits ``[B]`` of ``arch`` from dense ``[B, D]`` and sparse ids ``[B, F]``, running
    only its ops at fixed shapes: equal to ``supernet(dense, sparse, arch)``."""
    prog = segmented(supernet)
    return prog.forward_embedded(supernet, dense, supernet.embedding(sparse),
                                 prog.encode(supernet, arch))
