"""Fixed-shape (masked) forms of the elastic ops: one class per catalogue operator (the
interaction ops are in :mod:`ranknas.supernet.masked_interaction`).

See :mod:`ranknas.supernet.masked_base` for the conventions (merged inputs padded to the port's
bound, width masks, 0/1 branches of the sliced op's shape-dependent computations).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ranknas.evaluator.tiny_attention import (
    FUSED_MAX_HEAD_DIM,
    FUSED_MAX_TOKENS,
    tiny_head_attention,
)
from ranknas.spaces.materialized import MaterializedNode
from ranknas.supernet.elastic_base import ElasticOp, activate, positions, take
from ranknas.supernet.fused_encoder import (
    ENCODER_WEIGHTS,
    fused_encoder_fits,
    tiny_encoder_layer,
)
from ranknas.supernet.masked_base import (
    MaskedOp,
    Path,
    PortIn,
    Slot,
    Slots,
    Writer,
    branch,
    first,
    layer_norm,
    register_masked,
    resize,
    width_tail,
)


# -- dense ---------------------------------------------------------------------------------
@register_masked
class MaskedLinear2d(MaskedOp):
    """``x [B, D] -> act(LN(x W^T))`` at ``W_max`` (or ``size``) with a width mask."""

    op_name = "linear-2d"
    sizable = True

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        self.out_size = self.spec.width_max
        self.w = slots.width(self.out_size)

    def encode(self, w: Writer, node: MaterializedNode) -> None:
        w.width(self.w, node.width)

    def forward(self, x: dict[str, torch.Tensor], path: Path,
                size: int | None = None) -> torch.Tensor:
        y = self.ports["x"].linear(x["x"], self.m.fc, path, size)
        return activate(width_tail(y, self.m.norm, self.w, path), self.activation)


@register_masked
class MaskedDcnCross(MaskedOp):
    """``x * (W x + b) + x``: full rank and/or rank-masked ``U V^T``, blended by width None."""

    op_name = "dcn-cross"

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        self.out_size = ports["x"].bound
        self.full = slots.f(1, 1.0 if module.full is not None else 0.0)
        self.rank = slots.width(self.spec.width_max) if module.down is not None else None
        if module.full is not None and module.down is not None:
            self.branches = (self.full,)

    def encode(self, w: Writer, node: MaterializedNode) -> None:
        w.flag(self.full, node.width is None)
        if node.width is not None:
            w.width(self.rank, node.width)

    def forward(self, x: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
        port, xin, m = self.ports["x"], x["x"], self.m
        n = xin.shape[-1]

        def full() -> torch.Tensor:
            weight = port.take(port.take(m.full.weight, 0, path, n), 1, path, n)
            return F.linear(xin, weight, port.take(m.full.bias, 0, path, n))

        def low_rank() -> torch.Tensor:
            low = port.linear(xin, m.down, path) * self.rank[0].view(path)
            return F.linear(low, port.take(m.up.weight, 0, path, n),
                            port.take(m.up.bias, 0, path, n))

        if m.down is None:
            proj = full()
        elif m.full is None:
            proj = low_rank()
        else:
            proj = branch(path, self.full, full, low_rank)
        return xin * proj + xin


class _MaskedBinary(MaskedOp):
    """``left``/``right`` zero-padded to the wider of the two, ``m``; the gate and projection
    weights indexed by position, wrapping modulo their ``P`` beyond it (as the sliced op:
    positions past ``P`` reuse its weights); projection skipped (by a 0/1 blend) when the
    sliced op skips it (``p == w``)."""

    sizable = joint = True

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        self.out_size, self.padded = self.spec.width_max, module.padded
        self.w = slots.width(self.out_size)
        self.skip = slots.f(1)
        self.branches = (self.skip,)

    def _take(self, weight: torch.Tensor, dim: int, m: int) -> torch.Tensor:
        """``weight``'s positions ``0..m-1`` along ``dim``, modulo ``P``."""
        return take(weight, dim, positions(m, self.padded, weight.device))

    def encode(self, w: Writer, node: MaterializedNode) -> None:
        w.width(self.w, node.width)
        w.flag(self.skip, max(self.in_width(node, "left"), self.in_width(node, "right"))
               == node.width)

    def _tail(self, y: torch.Tensor, path: Path, size: int | None) -> torch.Tensor:
        """``y [B, m]`` projected (or not) to ``[B, size]``, then the width mask."""
        size, p = size or self.out_size, self.m.proj
        y = branch(path, self.skip, lambda: resize(y, size), lambda: F.linear(
            y, self._take(first(p.weight, size), 1, y.shape[-1]),
            None if p.bias is None else first(p.bias, size)))
        return width_tail(y, self.m.norm, self.w, path)

    def _sides(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # the wider input holds the sliced op's width: positions past it meet zeros
        m = max(x["left"].shape[-1], x["right"].shape[-1])
        return resize(x["left"], m), resize(x["right"], m)


@register_masked
class MaskedSigmoidGating(_MaskedBinary):
    op_name = "sigmoid-gating"

    def forward(self, x: dict[str, torch.Tensor], path: Path,
                size: int | None = None) -> torch.Tensor:
        left, right = self._sides(x)
        m, g = left.shape[-1], self.m.gate
        gate = torch.sigmoid(F.linear(left, self._take(self._take(g.weight, 0, m), 1, m),
                                      self._take(g.bias, 0, m)))
        return self._tail(gate * right, path, size)


@register_masked
class MaskedSum(_MaskedBinary):
    op_name = "sum"

    def forward(self, x: dict[str, torch.Tensor], path: Path,
                size: int | None = None) -> torch.Tensor:
        left, right = self._sides(x)
        return self._tail(left + right, path, size)


# -- sparse --------------------------------------------------------------------------------
class _MaskedFields(MaskedOp):
    """The field projection ``[B, Nb, E] -> [B, W, E]`` with a field-width mask, ``W`` the
    fixed size (``W_max`` by default, or fewer fields that still hold the width)."""

    sizable = True

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        self.out_size = self.spec.width_max
        self.w = slots.width(self.out_size)

    def encode(self, w: Writer, node: MaterializedNode) -> None:
        w.width(self.w, node.width)

    def field_major(self, fixed: Mapping[Slot, bool]) -> frozenset[str]:
        return frozenset({"x"})

    def _project(self, y: torch.Tensor, path: Path, activation: str,
                 size: int | None) -> torch.Tensor:
        size = size or self.out_size
        fc, y = self.m.proj.fc, y.transpose(1, 2)
        weight = self.ports["x"].take(first(fc.weight, size), 1, path, y.shape[-1])
        z = F.linear(y, weight, None if fc.bias is None else first(fc.bias, size))  # [B, E, W]
        z = width_tail(z, self.m.proj.norm, self.w, path)
        return activate(z, activation).transpose(1, 2)


@register_masked
class MaskedLinear3d(_MaskedFields):
    op_name = "linear-3d"

    def forward(self, x: dict[str, torch.Tensor], path: Path,
                size: int | None = None) -> torch.Tensor:
        return self._project(x["x"], path, self.activation, size)


@register_masked
class MaskedTransformer(_MaskedFields):
    """Field projection, then the post-LN encoder over ``W_max`` tokens with the padded
    tokens masked out of every softmax (an additive ``-inf`` key bias) and zeroed at the end."""

    op_name = "transformer"

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        self.key_bias = slots.f(self.out_size, 0.0)

    def encode(self, w: Writer, node: MaterializedNode) -> None:
        super().encode(w, node)
        w.set(self.key_bias, torch.where(torch.arange(self.out_size) < node.width, 0.0,
                                         -math.inf))

    def forward(self, x: dict[str, torch.Tensor], path: Path,
                size: int | None = None) -> torch.Tensor:
        m = self.m
        z = self._project(x["x"], path, "identity", size)  # [B, L, E]
        b, n, e = z.shape
        heads = m.attn.num_heads
        key_bias = self.key_bias.view(path)[:n]
        if fused_encoder_fits(z, heads):
            weights = [m.get_parameter(name) for name in ENCODER_WEIGHTS]
            return tiny_encoder_layer(z, key_bias, self.w[0].view(path)[:n], weights,
                                      heads)[0]
        qkv = F.linear(z, m.attn.in_proj_weight, m.attn.in_proj_bias)
        if z.is_cuda and e // heads <= FUSED_MAX_HEAD_DIM and n <= FUSED_MAX_TOKENS:
            # SDPA's math path writes [B, h, L, L] scores: ~5x slower for NASRec's heads of 2
            att = tiny_head_attention(qkv, heads, key_bias)[0]
        else:
            q, k, v = qkv.view(b, n, 3, heads, e // heads).permute(2, 0, 3, 1, 4).unbind(0)
            bias = key_bias.view(1, 1, 1, n)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            att = att.transpose(1, 2).reshape(b, n, e)
        att = m.attn.out_proj(att)
        z = layer_norm(z + att, m.attn_norm.weight, m.attn_norm.bias)
        z = layer_norm(z + m.fc2(torch.relu(m.fc1(z))), m.ffn_norm.weight, m.ffn_norm.bias)
        return z * self.w[0].view(path)[:n, None]


# -- merge ---------------------------------------------------------------------------------
@register_masked
class MaskedConcat(MaskedOp):
    """``concat`` / ``concat-3d``: the merged input itself."""

    op_name = "concat"

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        self.out_size = ports["x"].bound

    def forward(self, x: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
        return x["x"]


@register_masked
class MaskedConcat3d(MaskedConcat):
    op_name = "concat-3d"


@register_masked
class MaskedAdd(MaskedOp):
    """``pad(a) + pad(b)`` at the wider input (``out_size`` at the ports' bounds); an
    absent ``b`` arrives as zeros."""

    op_name = "add"

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        self.out_size = max(p.bound for p in ports.values())

    def forward(self, x: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
        # not out_size: the segmented step may run the inputs narrower, or aligned wider
        size = max(v.shape[1] for v in x.values())
        return sum(resize(v, size) for v in x.values())


@register_masked
class MaskedDenseToSparse(MaskedOp):
    """``[B, D] -> [B, W, E]``: ``LN(Linear(D, W*E))`` or (blend, ``D == W*E``) a reshape."""

    op_name = "dense-to-sparse"

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        self.out_size = self.spec.width_max
        self.proj = slots.f(1, 1.0)
        self.w = slots.width(self.out_size * self.dim)
        self.branches = (self.proj,)

    def encode(self, w: Writer, node: MaterializedNode) -> None:
        w.flag(self.proj, self.in_width(node, "x") != node.width * self.dim)
        w.width(self.w, node.width * self.dim)

    def forward(self, x: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
        mask = self.w[0].view(path)
        xin, p = x["x"], self.m.proj
        z = branch(path, self.proj,
                   lambda: width_tail(self.ports["x"].linear(xin, p.fc, path), p.norm, self.w,
                                      path),
                   lambda: resize(xin, mask.shape[0]) * mask)
        return z.view(z.shape[0], self.out_size, self.dim)
