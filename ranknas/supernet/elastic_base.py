"""The elastic-operator interface: one shared-weight counterpart per catalogue operator.

An elastic op holds an operator's parameters at the widest shapes one (block, op, layer) of a
space can ever see, and runs any narrower instance by *slicing* them:

- **Output side** (rows): the chosen width ``w`` takes rows ``[:w]`` of the widest weight, and
  LayerNorms take ``[:w]`` of their affine parameters, normalising over the used features only.
- **Input side** (columns): every port's storage is laid out *per source*: each candidate
  source of the port owns a fixed region of columns (features for dense ports, fields for sparse
  ports), in canonical candidate order, sized for that source's widest output. An architecture's
  merged input is mapped onto storage by an index (:class:`PortCols`) with one entry per merged
  input position. So the weights a source's features meet are the same whichever other sources
  are connected (NASRec's zero-padded "concatenate every candidate" input, without the zeros).

Each elastic op implements ``forward(inputs_by_port, width, source_layout)`` and
``export(width, source_layout) -> state_dict``; the state dict loads, with ``strict=True``, into
``op.build(...)`` for the same shapes, and that module computes exactly what ``forward`` did.
Adding an operator to the catalogue means adding one elastic class (:func:`register_elastic`).

This first version slices rather than masking at fixed shapes: it is exactly equal to the
standalone model (same matmul shapes, LayerNorm over the used features) and unselected ops,
widths and inputs cost nothing. A fixed-shape masked variant that CUDA graphs can capture is a
later performance step (see DESIGN.md, "Speed by design").
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ranknas.errors import ConfigError, InvalidArchitecture
from ranknas.spaces.ops import OpContext, Operator, TensorSpec

#: Storage positions of a port's merged input: a contiguous ``slice`` or a long index tensor.
Cols = slice | torch.Tensor


@dataclass(frozen=True)
class PortCols:
    """Where one port's merged input lives in the op's storage, for one architecture.

    Attributes:
        spec: The merged input (dense ``[B, D]`` or sparse ``[B, N, E]``).
        cols: Storage position of each of the D features (dense ports) or N fields (sparse
            ports), in merged order.
    """

    spec: TensorSpec
    cols: Cols


#: Port name -> its storage positions, for the ports present in the architecture.
SourceLayout = Mapping[str, PortCols]


@dataclass(frozen=True)
class ElasticSpec:
    """The widest shapes of one (block, op, layer).

    Attributes:
        op: The catalogue operator.
        ctx: Space-wide op settings (embedding dim E, layernorm, activation).
        in_sizes: Storage positions of each port that can ever be present (port units:
            features or fields): the sum of its candidate sources' regions.
        in_bounds: Widest merged input of each such port (port units), as actually fed; the
            fan-in used for initialisation and the size of position-indexed storage.
        widths: Candidate widths of this layer (None: the op's default).
        max_slot: Cap on position-indexed storage (see :meth:`positional`).
    """

    op: Operator
    ctx: OpContext
    in_sizes: Mapping[str, int]
    in_bounds: Mapping[str, int]
    widths: tuple[int | None, ...]
    max_slot: int

    @property
    def width_max(self) -> int:
        """The widest integer width (0 when every candidate is None)."""
        return max((w for w in self.widths if w is not None), default=0)

    @property
    def has_int_width(self) -> bool:
        return any(w is not None for w in self.widths)

    def positional(self, *ports: str) -> int:
        """Size of storage indexed by merged position rather than by source: the widest input
        of ``ports``, capped at ``max_slot`` (positions beyond wrap around, see
        :func:`positions`)."""
        return max(1, min(max(self.in_bounds[p] for p in ports), self.max_slot))


_ARANGE_CACHE: dict[tuple[int, int, str], torch.Tensor] = {}


def positions(n: int, size: int, device: torch.device) -> Cols:
    """Storage positions of merged positions ``0..n-1`` in position-indexed storage of ``size``:
    ``slice(0, n)`` when it fits, else ``arange(n) % size`` (weights tied modulo ``size``)."""
    if n <= size:
        return slice(0, n)
    key = (n, size, str(device))
    if key not in _ARANGE_CACHE:
        _ARANGE_CACHE[key] = torch.arange(n, device=device) % size
    return _ARANGE_CACHE[key]


def first(t: torch.Tensor, n: int, dim: int = 0) -> torch.Tensor:
    """``t``'s first ``n`` entries along ``dim``; ``t`` itself when it has no more (a slice of a
    parameter is an autograd node whose backward zeroes and copies the whole parameter)."""
    return t if n >= t.shape[dim] else t.narrow(dim, 0, n)


def take(weight: torch.Tensor, dim: int, cols: Cols) -> torch.Tensor:
    """``weight`` restricted to ``cols`` along ``dim``: a view for a slice (``weight`` itself
    for all of it: :func:`first`), a gather otherwise."""
    if isinstance(cols, slice):
        if cols.start == 0:
            return first(weight, cols.stop, dim)
        return weight.narrow(dim, cols.start, cols.stop - cols.start)
    return weight.index_select(dim, cols)


def uniform_parameter(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: ``nn.Linear``'s default init for that fan-in."""
    bound = 1.0 / math.sqrt(max(1, fan_in))
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class SlicedLinear(nn.Module):
    """The widest ``Linear``: ``weight [out_max, in_size]``, optional ``bias [out_max]``.

    Args:
        out_max: Widest output.
        in_size: Storage positions of the input.
        fan_in: Fan-in for initialisation (the widest input as actually fed).
        bias: Whether the op family has a bias here.
    """

    def __init__(self, out_max: int, in_size: int, fan_in: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = uniform_parameter((out_max, in_size), fan_in)
        self.bias = uniform_parameter((out_max,), fan_in) if bias else None

    def sliced(self, rows: Cols, cols: Cols) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = take(take(self.weight, 0, rows), 1, cols)
        return weight, None if self.bias is None else take(self.bias, 0, rows)

    def forward(self, x: torch.Tensor, rows: Cols, cols: Cols) -> torch.Tensor:
        """``x [..., len(cols)] -> [..., len(rows)]``."""
        weight, bias = self.sliced(rows, cols)
        if x.dim() > 2 and self.weight.requires_grad and not weight.requires_grad:
            # Under no_grad a slice does not require grad, but an nn.Linear's weight still
            # does, and ATen's matmul picks its kernel (fold to mm vs bmm) by that flag for a
            # non-contiguous 3-D input; mirror the standalone op so results agree bit for bit.
            weight = weight.detach().requires_grad_()
        return F.linear(x, weight, bias)

    def export(self, rows: Cols, cols: Cols, prefix: str) -> dict[str, torch.Tensor]:
        """``{prefix}weight`` (and ``{prefix}bias``) of the equivalent ``nn.Linear``."""
        weight, bias = self.sliced(rows, cols)
        out = {f"{prefix}weight": weight.detach().clone()}
        if bias is not None:
            out[f"{prefix}bias"] = bias.detach().clone()
        return out


class SlicedNorm(nn.Module):
    """The widest ``LayerNorm``; width ``n`` normalises over ``n`` features with ``[:n]``.

    Args:
        size: Widest normalised width.
        init: Initial weight (1, or NASRec's ``LN_INIT`` for residual norms).
    """

    def __init__(self, size: int, init: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((size,), float(init)))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return F.layer_norm(x, (n,), self.weight[:n], self.bias[:n])

    def export(self, n: int, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}weight": self.weight[:n].detach().clone(),
                f"{prefix}bias": self.bias[:n].detach().clone()}


class SlicedLinearNorm(nn.Module):
    """The widest ``_linear_norm``: ``Linear(bias=not ln)`` then LayerNorm if ``ln``."""

    def __init__(self, out_max: int, in_size: int, fan_in: int, layernorm: bool) -> None:
        super().__init__()
        self.fc = SlicedLinear(out_max, in_size, fan_in, bias=not layernorm)
        self.norm = SlicedNorm(out_max) if layernorm else None

    def forward(self, x: torch.Tensor, out: int, cols: Cols) -> torch.Tensor:
        y = self.fc(x, slice(0, out), cols)
        return self.norm(y, out) if self.norm is not None else y

    def export(self, out: int, cols: Cols, prefix: str) -> dict[str, torch.Tensor]:
        """Keys of ``nn.Sequential(fc, LayerNorm)`` (``0.``, ``1.``) or of a bare Linear."""
        if self.norm is None:
            return self.fc.export(slice(0, out), cols, prefix)
        return {**self.fc.export(slice(0, out), cols, f"{prefix}0."),
                **self.norm.export(out, f"{prefix}1.")}


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """``ctx.activation`` as a function (the standalone ops use the matching module)."""
    if name == "relu":
        return F.relu(x)
    if name == "identity":
        return x
    raise ConfigError("activation", f"unknown activation {name!r} (known: relu, identity)")


def need_width(op: ElasticOp, width: int | None) -> int:
    if width is None:
        raise InvalidArchitecture(op.op_name, "this operator needs a width")
    return int(width)


class ElasticOp(nn.Module):
    """Shared-weight counterpart of one catalogue operator, for one (block, op, layer).

    Subclasses set :attr:`op_name`, allocate parameters in ``__init__`` from the
    :class:`ElasticSpec`, and implement :meth:`forward` and :meth:`export`.

    Attributes:
        op_name: The catalogue operator it mirrors.
        passthrough: Its output *is* its merged input (``concat``, ``concat-3d``): consumers
            then lay out their storage per original source, seeing through it.
    """

    op_name: ClassVar[str]
    passthrough: ClassVar[bool] = False

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__()
        if spec.op.name != self.op_name:
            raise ConfigError("supernet", f"{type(self).__name__} mirrors {self.op_name!r}, "
                                          f"not {spec.op.name!r}")
        self.spec = spec
        self.ctx = spec.ctx

    @abstractmethod
    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        """Run the op at ``width`` on ``inputs`` (merged, one tensor per present port)."""

    @abstractmethod
    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        """The state dict of ``op.build(specs, width, ctx)`` for the same shapes: copies of
        the slices :meth:`forward` uses."""

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{p}={n}" for p, n in self.spec.in_sizes.items())
        return f"{self.op_name}: in {sizes}, widths {list(self.spec.widths)}"


ELASTIC_OPS: dict[str, type[ElasticOp]] = {}


def register_elastic(cls: type[ElasticOp]) -> type[ElasticOp]:
    """Class decorator: make ``cls`` the elastic counterpart of ``cls.op_name``."""
    if cls.op_name in ELASTIC_OPS:
        raise ConfigError("supernet", f"an elastic op for {cls.op_name!r} is already registered")
    ELASTIC_OPS[cls.op_name] = cls
    return cls


def elastic_class(op_name: str) -> type[ElasticOp]:
    """The elastic counterpart of a catalogue operator.

    Raises:
        ConfigError: the operator has none; the message says how to add one.
    """
    try:
        return ELASTIC_OPS[op_name]
    except KeyError:
        raise ConfigError("supernet", f"operator {op_name!r} has no elastic counterpart, so no "
                          "supernet can hold it; subclass ranknas.supernet.ElasticOp and decorate "
                          "it with @register_elastic") from None
