"""Building blocks of the fixed-shape supernet execution (:mod:`ranknas.supernet.masked`).

Each :class:`MaskedOp` (in :mod:`ranknas.supernet.masked_ops`) mirrors one elastic op of
:mod:`ranknas.supernet.elastic_dense` /
``elastic_interaction`` / ``elastic_sparse`` / ``elastic_merge`` at its *widest* shapes, on the
*same* parameters, and computes exactly what the sliced op computes, padded with zeros:

- ports arrive as fixed tensors ``[B, bound]`` (dense) or ``[B, bound, E]`` (sparse) holding the
  merged input in merged order, zeros beyond the actual width;
- a port's weight columns are the storage positions of the merged input: either statically
  ``[:bound]`` or gathered per architecture with a fixed-length index (:class:`PortIn`);
- the chosen width is a 0/1 mask (LayerNorms normalise over the active features only);
- the sliced op's shape-dependent branches (skip a projection when ``P == W`` ...) are both
  computed and blended with 0/1 scalars (:func:`branch`), unless the path fixes them on the
  host (:class:`FixedPath`: the segmented execution, which captures a variant per value).

Every per-architecture value is a :class:`Slot` in two flat buffers (floats, long indices), so
the whole path is two tensors of fixed size per space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ranknas.errors import ConfigError
from ranknas.spaces.materialized import MaterializedNode
from ranknas.spaces.ops import Kind
from ranknas.supernet.elastic_base import ElasticOp, SlicedLinear, SlicedNorm, first
from ranknas.supernet.fused_norm import EPS, fused_norm_fits, masked_layer_norm

#: Per-architecture tensors of one path: ``(floats [Nf], ints [Ni])``.
Path = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Slot:
    """A fixed range of one of the two path buffers."""

    offset: int
    size: int
    ints: bool = False

    def view(self, path: Path) -> torch.Tensor:
        buf = path[1] if self.ints else path[0]
        return buf.narrow(0, self.offset, self.size)


class Slots:
    """Allocates :class:`Slot` ranges and their defaults (the values of an unused op)."""

    def __init__(self) -> None:
        self.floats: list[float] = []
        self.ints: list[int] = []
        self._defaults: tuple[int, int, torch.Tensor, torch.Tensor] | None = None

    def defaults(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The default float and int buffers (cached: building them from lists costs ~10 ms
        per architecture for ``nasrec_full``)."""
        n, m = len(self.floats), len(self.ints)
        if self._defaults is None or self._defaults[:2] != (n, m):
            self._defaults = (n, m, torch.tensor(self.floats, dtype=torch.float32),
                              torch.tensor(self.ints, dtype=torch.long))
        return self._defaults[2], self._defaults[3]

    def f(self, size: int, default: float = 0.0) -> Slot:
        slot = Slot(len(self.floats), size)
        self.floats += [default] * size
        return slot

    def i(self, size: int, default: int | list[int] = 0) -> Slot:
        """An int slot of ``size``, its default one value for all or one per position."""
        slot = Slot(len(self.ints), size, ints=True)
        self.ints += [default] * size if isinstance(default, int) else default
        return slot

    def width(self, size: int) -> tuple[Slot, Slot]:
        """(mask ``[size]``, 1/width ``[1]``); default: every position active."""
        return self.f(size, 1.0), self.f(1, 1.0 / size)


class Writer:
    """Fills one architecture's path buffers (CPU) from the slots' defaults.

    The buffers are numpy arrays while they are written (a slice write costs a tenth of a
    tensor's, and an encoding writes thousands) and become tensors in :meth:`tensors`.
    """

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        floats, ints = slots.defaults()
        self.floats, self.ints = floats.numpy().copy(), ints.numpy().copy()

    def reset(self) -> Writer:
        """Back to the defaults, in the same buffers: reusing them saves the page faults of
        fresh megabyte arrays (~0.5 ms per ``nasrec_full`` path on a 2-core CPU)."""
        floats, ints = self.slots.defaults()
        np.copyto(self.floats, floats.numpy())
        np.copyto(self.ints, ints.numpy())
        return self

    def set(self, slot: Slot, value: float | int | torch.Tensor) -> None:
        buf = self.ints if slot.ints else self.floats
        buf[slot.offset:slot.offset + slot.size] = (value.numpy() if isinstance(value, torch.Tensor)
                                                    else value)

    def prefix(self, slot: Slot, values: np.ndarray) -> None:
        """Write ``values`` at the start of ``slot``; the rest keeps its default."""
        if values.size > slot.size:
            raise ConfigError("masked", f"{values.size} values for a slot of {slot.size}")
        buf = self.ints if slot.ints else self.floats
        buf[slot.offset:slot.offset + values.size] = values

    def flag(self, slot: Slot, on: bool) -> None:
        """Set a one-float slot to 1 or 0 (~115 a ``nasrec_full`` path: an item write)."""
        self.floats[slot.offset] = 1.0 if on else 0.0

    def width(self, slots: tuple[Slot, Slot], n: int) -> None:
        mask, inv = slots
        if not 1 <= n <= mask.size:
            raise ConfigError("masked", f"width {n} outside 1..{mask.size}")
        start = mask.offset
        self.floats[start:start + n] = 1.0
        self.floats[start + n:start + mask.size] = 0.0
        self.floats[inv.offset] = 1.0 / n

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(floats [Nf], ints [Ni])`` (sharing the written memory)."""
        return torch.from_numpy(self.floats), torch.from_numpy(self.ints)


def host_copy(t: torch.Tensor, pin: bool = False) -> torch.Tensor:
    """A copy of CPU tensor ``t`` (in pinned memory with ``pin``), made by numpy on this
    thread: torch's copy of a megabyte runs on every intra-op thread, whose spinning after it
    starves other processes on the host (a path prefetch worker ran 1.7x slower)."""
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
    np.copyto(out.numpy(), t.numpy())
    return out


def resize(x: torch.Tensor, n: int, dim: int = 1) -> torch.Tensor:
    """Zero-pad or truncate ``dim`` to ``n`` (truncation only drops zero padding)."""
    have = x.shape[dim]
    if have == n:
        return x
    if have > n:
        return x.narrow(dim, 0, n)
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, n - have]
    return F.pad(x, pad)


def aligned(n: int) -> int:
    """A fixed width of ``n`` (from 64) rounded up to 8: cuBLAS runs a GEMM whose K or N is
    not a multiple of 16 bytes on its unaligned kernels (at K = 2,061 on an H200, 550 of
    linear-2d's 692 us)."""
    return -(-n // 8) * 8 if n >= 64 else n


def as_kind(x: torch.Tensor, kind: Kind, dim: int) -> torch.Tensor:
    """``_as_kind`` of :mod:`ranknas.spaces.model` on a padded natural form (same layout)."""
    if kind is Kind.DENSE:
        return x.flatten(1) if x.dim() == 3 else x
    if x.dim() == 3:
        return x
    return resize(x, -(-x.shape[1] // dim) * dim).view(x.shape[0], -1, dim)


def masked_norm(y: torch.Tensor, norm: SlicedNorm, mask: torch.Tensor,
                inv: torch.Tensor) -> torch.Tensor:
    """``SlicedNorm(y[..., :n], n)`` zero-padded: LayerNorm over the ``mask``-ed features of the
    last dim (``inv = 1/n``), biased variance and eps as ``F.layer_norm``. ``y`` may be
    narrower than the norm (an op run at a smaller fixed width): its first features."""
    size = y.shape[-1]
    weight, bias, mask = first(norm.weight, size), first(norm.bias, size), mask[:size]
    if _fused(y):
        return masked_layer_norm(y, weight, bias, mask, inv)
    mean = (y * mask).sum(-1, keepdim=True) * inv
    d = (y - mean) * mask
    var = (d * d).sum(-1, keepdim=True) * inv
    return (d * torch.rsqrt(var + EPS) * weight + bias) * mask


def width_tail(y: torch.Tensor, norm: SlicedNorm | None, w: tuple[Slot, Slot],
               path: Path) -> torch.Tensor:
    """A width's mask on ``y [..., s]`` (``s`` up to the mask's size): :func:`masked_norm`
    over the active features, or zeros beyond them without a norm. ``w``: the (mask, 1/width)
    slots of :meth:`Slots.width`."""
    mask, inv = (slot.view(path) for slot in w)
    return masked_norm(y, norm, mask, inv) if norm is not None else y * mask[:y.shape[-1]]


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.layer_norm`` over the last dim of ``x [..., N]``; the fused kernel on CUDA (PyTorch's
    runs one row per warp: slow for NASRec's N = 16 over ``B * L`` rows)."""
    if _fused(x):
        return masked_layer_norm(x, weight, bias)
    return F.layer_norm(x, (x.shape[-1],), weight, bias)


def _fused(x: torch.Tensor) -> bool:
    # one kernel instead of ~10 elementwise ones forward and ~20 backward; a compiled
    # (masked) program leaves the fusing to inductor
    return fused_norm_fits(x) and not torch.compiler.is_compiling()


class FixedPath(tuple):
    """A :data:`Path` that also carries the values of some branch flags, known on the host.

    The segmented execution captures one variant of a segment per value of its op's
    :attr:`MaskedOp.branches` and runs it on a fixed path: :func:`branch` then computes
    only the side the flag takes, with no blend and no zero gradients through the other.
    """

    fixed: Mapping[Slot, bool]

    def __new__(cls, path: Path, fixed: Mapping[Slot, bool]) -> FixedPath:
        self = super().__new__(cls, path)
        self.fixed = fixed
        return self


def branch(path: Path, flag: Slot, on: Callable[[], torch.Tensor],
           off: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``on()`` where the 0/1 ``flag`` is 1, else ``off()``: only that side when ``path``
    fixes the flag (:class:`FixedPath`), else both sides, blended (:func:`blend`)."""
    if isinstance(path, FixedPath) and flag in path.fixed:
        return on() if path.fixed[flag] else off()
    return blend(flag.view(path), on(), off())


def blend(on: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` where the 0/1 scalar ``on`` is 1, else ``b``; the unused side gets zero grads.

    One select, not ``on * a + (1 - on) * b``: that is three passes over the outputs forward
    and two backward, and a non-finite value on the unused side would leak through ``0 * x``.
    """
    return torch.where(on > 0, a, b)


@dataclass(frozen=True)
class PortIn:
    """Static shape of one port of one (block, op, layer).

    Attributes:
        name: Port name.
        kind: Dense (features) or sparse (fields).
        bound: Fixed merged length (the widest merged input, port units).
        cols: Per-architecture storage positions ``[aligned(bound)]`` (:func:`aligned`);
            None when they are always ``0..bound-1`` (one candidate source, not
            pass-through, not capped).
    """

    name: str
    kind: Kind
    bound: int
    cols: Slot | None

    def take(self, weight: torch.Tensor, dim: int, path: Path,
             size: int | None = None) -> torch.Tensor:
        """``weight`` at the first ``size`` (default: ``bound``; at most
        ``aligned(bound)``) merged positions along ``dim`` (padding: any column, or zeros,
        meeting a zero input)."""
        size = self.bound if size is None else size
        if self.cols is None:
            return resize(weight, size, dim)
        return weight.index_select(dim, self.cols.view(path)[:size])

    def linear(self, x: torch.Tensor, lin: SlicedLinear, path: Path,
               rows: int | None = None) -> torch.Tensor:
        """``lin`` at its first ``rows`` output rows (default: all) over the merged input
        ``x [..., n]``: ``n`` is the bound, or the aligned or fewer columns the segmented
        step runs at."""
        weight = lin.weight if rows is None else first(lin.weight, rows)
        bias = lin.bias if rows is None or lin.bias is None else first(lin.bias, rows)
        return F.linear(x, self.take(weight, 1, path, x.shape[-1]), bias)


class MaskedOp:
    """Fixed-shape form of one elastic op (one (block, op, layer)).

    Attributes:
        out_kind: Output kind; ``out_size`` its natural padded size (features or fields).
        sizable: ``forward`` can compute the output at a fixed size below ``out_size`` that
            still holds the node's width (its ``size`` argument).
        joint: ``forward`` pads its inputs to the widest of them: a fixed width that holds
            every input serves them all.
        branches: The 0/1 flags ``forward`` chooses a computation by (:func:`branch`); their
            values are part of a segment variant's key, so each variant runs one side.
    """

    op_name: ClassVar[str]
    sizable: ClassVar[bool] = False
    joint: ClassVar[bool] = False
    out_kind: Kind
    out_size: int

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        self.m, self.ports, self.spec = module, ports, module.spec
        self.dim = module.ctx.embedding_dim
        self.out_kind = module.spec.op.out_kind
        # plain attributes: forward must not call properties (torch.compile traces it)
        self.width_max, self.activation = module.spec.width_max, module.ctx.activation
        self.branches: tuple[Slot, ...] = ()

    def encode(self, w: Writer, node: MaterializedNode) -> None:
        """Write this op's per-architecture values for ``node`` (defaults: unused)."""

    def field_major(self, fixed: Mapping[Slot, bool]) -> frozenset[str]:
        """The ports whose fields ``[B, n, E]`` the op first projects along ``n`` (one GEMM
        over ``[B*E, n]`` rows) when its :attr:`branches` are ``fixed``: the segmented step
        gathers those inputs field-major, so that the op's transpose is a view, not a copy
        forward and another of the gradient backward."""
        return frozenset()

    def forward(self, x: dict[str, torch.Tensor], path: Path,
                size: int | None = None) -> torch.Tensor:
        """The output from the ports' inputs ``x``, at ``size`` (``out_size`` when None; a
        :attr:`sizable` op only) along its width."""
        raise NotImplementedError

    @staticmethod
    def in_width(node: MaterializedNode, port: str) -> int:
        """Merged width of ``port`` of ``node`` in its own units (0 when absent)."""
        specs = dict(node.in_specs)
        return specs[port].width if port in specs else 0


MASKED_OPS: dict[str, type[MaskedOp]] = {}


def register_masked(cls: type[MaskedOp]) -> type[MaskedOp]:
    MASKED_OPS[cls.op_name] = cls
    return cls


def masked_class(op_name: str) -> type[MaskedOp]:
    """The fixed-shape form of ``op_name``.

    Raises:
        ConfigError: the op has none.
    """
    try:
        return MASKED_OPS[op_name]
    except KeyError:
        raise ConfigError("masked", f"op {op_name!r} has no fixed-shape form (add a MaskedOp "
                          "to ranknas.supernet.masked_ops)") from None
