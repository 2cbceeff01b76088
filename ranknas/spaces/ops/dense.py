"""Dense ops: ``[B, D] -> [B, W]``.

Also home of the small helpers the other op modules share: port validation
(:func:`resolve_ports`), activation byte counts (:func:`io_bytes`) and zero-padding of dense
tensors to a common width (:func:`pad_features`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ranknas.errors import InvalidArchitecture
from ranknas.spaces.ops.base import (
    BYTES_PER_VALUE,
    Kind,
    OpContext,
    OpCost,
    Operator,
    Port,
    TensorSpec,
    activation_flops,
    layer_norm_cost,
    make_activation,
)


# -- shared helpers ------------------------------------------------------------------------
def resolve_ports(op: Operator, inputs: Mapping[str, TensorSpec],
                  ctx: OpContext) -> dict[str, TensorSpec | None]:
    """Validate ``inputs`` against ``op.ports``; map every port name to its spec or None.

    Raises:
        InvalidArchitecture: an unknown port, a missing required port, a spec of the wrong kind,
            an empty tensor, or a sparse spec whose dim is not ``ctx.embedding_dim``.
    """
    known = {p.name for p in op.ports}
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise InvalidArchitecture(op.name, f"unknown input port(s) {unknown} "
                                           f"(ports: {[p.name for p in op.ports]})")
    out: dict[str, TensorSpec | None] = {}
    for port in op.ports:
        spec = inputs.get(port.name)
        if spec is None:
            if not port.optional:
                raise InvalidArchitecture(op.name, f"port {port.name!r} needs an input")
            out[port.name] = None
            continue
        if spec.kind is not port.kind:
            raise InvalidArchitecture(op.name, f"port {port.name!r} takes {port.kind} input, "
                                               f"got {spec}")
        if spec.width < 1:
            raise InvalidArchitecture(op.name, f"port {port.name!r} got an empty input {spec}")
        if spec.kind is Kind.SPARSE and spec.dim != ctx.embedding_dim:
            raise InvalidArchitecture(op.name, f"port {port.name!r} got {spec}, but the "
                                               f"embedding dim is {ctx.embedding_dim}")
        out[port.name] = spec
    return out


def io_bytes(inputs: Mapping[str, TensorSpec], out: TensorSpec) -> tuple[int, int]:
    """(bytes_read, bytes_written) of fp32 activations per example."""
    return (BYTES_PER_VALUE * sum(s.numel for s in inputs.values()),
            BYTES_PER_VALUE * out.numel)


def pad_features(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad a dense ``[B, D]`` tensor on the right to ``[B, width]`` (``width >= D``)."""
    extra = width - x.shape[-1]
    return F.pad(x, (0, extra)) if extra > 0 else x


def norm_or_bias_cost(width: int, layernorm: bool, rows: int = 1) -> tuple[int, int]:
    """(flops, params) of what follows a ``Linear(bias=not layernorm)``: its bias or a LayerNorm."""
    if layernorm:
        return layer_norm_cost(width, rows)
    return width * rows, width


class Linear2dModule(nn.Module):
    """FC, then optional LayerNorm, then activation: ``[B, D] -> [B, W]``."""

    def __init__(self, in_dim: int, width: int, ctx: OpContext) -> None:
        super().__init__()
        # A LayerNorm right after the FC makes its bias redundant (NASRec does the same).
        self.fc = nn.Linear(in_dim, width, bias=not ctx.layernorm)
        self.norm = nn.LayerNorm(width) if ctx.layernorm else nn.Identity()
        self.act = make_activation(ctx.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.fc(x)))


class Linear2d(Operator):
    """``linear-2d``: fully connected layer (one MLP layer). Stack with ``depth`` for an MLP."""

    name = "linear-2d"
    ports = (Port("x", Kind.DENSE),)
    out_kind = Kind.DENSE
    stackable = True

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        self.check_width(width)
        resolve_ports(self, inputs, ctx)
        return TensorSpec.dense(width)

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        self.output_spec(inputs, width, ctx)
        d, w = inputs["x"].width, int(width)
        mm = 2 * d * w
        flops, params = mm + activation_flops(ctx.activation, w), d * w
        if ctx.layernorm:
            ln_flops, ln_params = layer_norm_cost(w)
            flops, params = flops + ln_flops, params + ln_params
        else:
            flops, params = flops + w, params + w
        return OpCost(mm, flops, params, BYTES_PER_VALUE * d, BYTES_PER_VALUE * w)

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        self.output_spec(inputs, width, ctx)
        return Linear2dModule(inputs["x"].width, int(width), ctx)


# -- dcn-cross -----------------------------------------------------------------------------
class CrossModule(nn.Module):
    """One DCN-v2 cross layer: ``x * (W x + b) + x`` on ``[B, D]``.

    ``W`` is full rank (``Linear(D, D)``) when ``rank`` is None, else ``U V^T`` as
    ``Linear(D, rank, bias=False)`` followed by ``Linear(rank, D)``.
    """

    def __init__(self, dim: int, rank: int | None) -> None:
        super().__init__()
        if rank is None:
            self.proj: nn.Module = nn.Linear(dim, dim)
        else:
            self.proj = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.proj(x) + x


class DcnCross(Operator):
    """``dcn-cross``: a DCN-v2 cross layer, ``[B, D] -> [B, D]``.

    ``out = x0 * (W x0 + b) + x0`` where ``x0`` is the layer's (merged) input. Width is the rank:
    None gives a full-rank ``W`` (``D x D``); ``r`` gives the low-rank ``W = U V^T`` with ``U``
    ``D x r`` and ``V`` ``r x D`` (DCN-v2's "DCN-M" variant; ``r >= D`` is allowed but buys
    nothing). No LayerNorm and no activation, as in DCN-v2. Stacked with ``depth``, each layer
    crosses *its own* input with itself (``x_{l+1} = x_l * (W_l x_l + b_l) + x_l``), unlike the
    paper's stack where every layer multiplies by the stack's first input; feed the original
    features in again through a second connection to get the paper's form.
    """

    name = "dcn-cross"
    ports = (Port("x", Kind.DENSE),)
    out_kind = Kind.DENSE
    width_mode = "optional"
    stackable = True

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        self.check_width(width)
        return TensorSpec.dense(resolve_ports(self, inputs, ctx)["x"].width)

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        out = self.output_spec(inputs, width, ctx)
        d = out.width
        if width is None:
            mm, params = 2 * d * d, d * d + d
        else:
            mm, params = 4 * d * int(width), 2 * d * int(width) + d
        return OpCost(mm, mm + 3 * d, params, *io_bytes(inputs, out))  # bias, multiply, add

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        out = self.output_spec(inputs, width, ctx)
        return CrossModule(out.width, None if width is None else int(width))


# -- binary ops: sigmoid-gating, sum -------------------------------------------------------
def _binary_widths(op: Operator, inputs: Mapping[str, TensorSpec], width: int | None,
                   ctx: OpContext) -> tuple[int, int]:
    """(P, W): the padded width of left/right and the output width."""
    op.check_width(width)
    specs = resolve_ports(op, inputs, ctx)
    return max(specs["left"].width, specs["right"].width), int(width)


class SigmoidGatingModule(nn.Module):
    """``LN(proj(sigmoid(self_linear(left)) * right))`` on left/right zero-padded to ``[B, P]``."""

    def __init__(self, padded: int, width: int, ctx: OpContext) -> None:
        super().__init__()
        self.padded = padded
        self.gate = nn.Linear(padded, padded)
        self.proj = nn.Linear(padded, width) if padded != width else nn.Identity()
        self.norm = nn.LayerNorm(width) if ctx.layernorm else nn.Identity()

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(pad_features(left, self.padded)))
        return self.norm(self.proj(gate * pad_features(right, self.padded)))


class SigmoidGating(Operator):
    """``sigmoid-gating``: ``[B, Dl], [B, Dr] -> [B, W]`` (NASRec).

    The narrower of left/right is zero-padded to ``P = max(Dl, Dr)``; then
    ``out = sigmoid(Linear_PxP(left)) * right``, projected by ``Linear(P, W)`` (with bias) when
    ``P != W``, then LayerNorm(W) if ``ctx.layernorm``. No activation.
    """

    name = "sigmoid-gating"
    ports = (Port("left", Kind.DENSE, many=False), Port("right", Kind.DENSE, many=False))
    out_kind = Kind.DENSE

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        return TensorSpec.dense(_binary_widths(self, inputs, width, ctx)[1])

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        p, w = _binary_widths(self, inputs, width, ctx)
        mm, params = 2 * p * p, p * p + p
        flops = p + 4 * p + p  # gate bias, sigmoid, gating multiply
        if p != w:
            mm, params, flops = mm + 2 * p * w, params + p * w + w, flops + w
        if ctx.layernorm:
            ln_flops, ln_params = layer_norm_cost(w)
            flops, params = flops + ln_flops, params + ln_params
        return OpCost(mm, mm + flops, params, *io_bytes(inputs, TensorSpec.dense(w)))

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        p, w = _binary_widths(self, inputs, width, ctx)
        return SigmoidGatingModule(p, w, ctx)


class SumModule(nn.Module):
    """``LN(proj(left + right))`` on left/right zero-padded to ``[B, P]``."""

    def __init__(self, padded: int, width: int, ctx: OpContext) -> None:
        super().__init__()
        self.padded = padded
        self.proj = (nn.Linear(padded, width, bias=not ctx.layernorm) if padded != width
                     else nn.Identity())
        self.norm = nn.LayerNorm(width) if ctx.layernorm else nn.Identity()

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        total = pad_features(left, self.padded) + pad_features(right, self.padded)
        return self.norm(self.proj(total))


class Sum(Operator):
    """``sum``: ``[B, Dl], [B, Dr] -> [B, W]`` (NASRec).

    Left and right are zero-padded to ``P = max(Dl, Dr)`` and added; ``Linear(P, W)`` (bias only
    without LayerNorm) projects when ``P != W``; then LayerNorm(W) if ``ctx.layernorm``.
    No activation.
    """

    name = "sum"
    ports = (Port("left", Kind.DENSE, many=False), Port("right", Kind.DENSE, many=False))
    out_kind = Kind.DENSE

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        return TensorSpec.dense(_binary_widths(self, inputs, width, ctx)[1])

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        p, w = _binary_widths(self, inputs, width, ctx)
        mm, flops, params = 0, p, 0  # the add
        if p != w:
            mm = 2 * p * w
            params = p * w
            if not ctx.layernorm:
                flops, params = flops + w, params + w
        if ctx.layernorm:
            ln_flops, ln_params = layer_norm_cost(w)
            flops, params = flops + ln_flops, params + ln_params
        return OpCost(mm, mm + flops, params, *io_bytes(inputs, TensorSpec.dense(w)))

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        p, w = _binary_widths(self, inputs, width, ctx)
        return SumModule(p, w, ctx)
