"""Sparse ops: ``[B, N, E] -> [B, W, E]`` (W new fields of the same embedding dim E)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ranknas.spaces.ops.base import (
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
from ranknas.spaces.ops.dense import io_bytes, norm_or_bias_cost, resolve_ports

#: Initial weight of the transformer's residual LayerNorms (NASRec's ``LN_INIT``).
LN_INIT = 0.17
#: Candidate attention head counts, largest first; the first that divides E is used.
HEAD_CHOICES = (8, 4, 2, 1)


def self_attention(attn: nn.MultiheadAttention, z: torch.Tensor) -> torch.Tensor:
    """``attn(z, z, z)``'s output for batch-first tokens ``z [B, L, E]``.

    On the CPU the packed in-projection is split into ``[B, H, L, E / H]`` views for
    ``scaled_dot_product_attention`` (same kernel, same math). The module's own forward
    transposes to sequence-first and copies around that kernel: 1.1-1.55x slower forward +
    backward at B=512, E=16, 8 heads, 16-64 tokens, one thread (``benchmarks/RESULTS.md``).
    Elsewhere, for a module with dropout, extra key biases or separate projections, and for a
    forward patched onto the module (``TrainConfig.fused_attention``), the module runs.
    """
    plain = (z.device.type == "cpu" and "forward" not in vars(attn) and attn.batch_first
             and attn._qkv_same_embed_dim and attn.bias_k is None and not attn.add_zero_attn
             and (attn.dropout == 0 or not attn.training))
    if not plain:
        return attn(z, z, z, need_weights=False)[0]
    b, n, e = z.shape
    h = attn.num_heads
    qkv = F.linear(z, attn.in_proj_weight, attn.in_proj_bias)  # [B, L, 3E]: q | k | v
    q, k, v = qkv.view(b, n, 3, h, e // h).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, E / H]
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, e))


def attention_heads(dim: int) -> int:
    """The number of attention heads for embedding dim ``dim``: the largest of 8, 4, 2, 1."""
    return next(h for h in HEAD_CHOICES if dim % h == 0)


class FieldProjection(nn.Module):
    """Linear over the field axis: ``[B, N, E] -> [B, W, E]``.

    ``Linear(N, W, bias=not ln)`` on ``[B, E, N]``, LayerNorm(W) over that axis if ln, then
    ``act``; transposed back.
    """

    def __init__(self, fields: int, width: int, ctx: OpContext,
                 act: nn.Module | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(fields, width, bias=not ctx.layernorm)
        self.norm = nn.LayerNorm(width) if ctx.layernorm else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.fc(y.transpose(1, 2)))).transpose(1, 2)


def _field_projection_cost(n: int, w: int, e: int, ln: bool) -> tuple[int, int, int]:
    """(matmul flops, other flops, params) of a :class:`FieldProjection` (no activation)."""
    f, p = norm_or_bias_cost(w, ln, rows=e)
    return 2 * n * w * e, f, n * w + p


class _SparseOp(Operator):
    """Shared shape logic: one sparse port ``x``, a required width = output fields."""

    ports = (Port("x", Kind.SPARSE),)
    out_kind = Kind.SPARSE
    stackable = True

    def _dims(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> tuple[int, int, int]:
        """(N, E, W)."""
        self.check_width(width)
        x = resolve_ports(self, inputs, ctx)["x"]
        return x.width, x.dim, int(width)

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        _, e, w = self._dims(inputs, width, ctx)
        return TensorSpec.sparse(w, e)


class Linear3d(_SparseOp):
    """``linear-3d`` (EFC): field-axis FC, ``[B, N, E] -> [B, W, E]``.

    ``Linear(N, W, bias=not ln)`` applied to every embedding coordinate (over the transposed
    ``[B, E, N]``), then LayerNorm(W) if ``ctx.layernorm``, then ``ctx.activation``.
    """

    name = "linear-3d"

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        n, e, w = self._dims(inputs, width, ctx)
        mm, flops, params = _field_projection_cost(n, w, e, ctx.layernorm)
        flops += activation_flops(ctx.activation, w * e)
        return OpCost(mm, mm + flops, params, *io_bytes(inputs, TensorSpec.sparse(w, e)))

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        n, _, w = self._dims(inputs, width, ctx)
        return FieldProjection(n, w, ctx, make_activation(ctx.activation))


class TransformerModule(nn.Module):
    """Field projection, then one post-LN transformer encoder layer over the W fields."""

    def __init__(self, fields: int, width: int, dim: int, ctx: OpContext) -> None:
        super().__init__()
        self.proj = FieldProjection(fields, width, ctx)
        self.attn = nn.MultiheadAttention(dim, attention_heads(dim), batch_first=True)
        self.attn_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        nn.init.constant_(self.attn_norm.weight, LN_INIT)
        nn.init.constant_(self.ffn_norm.weight, LN_INIT)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``[B, N, E] -> [B, W, E]``."""
        z = self.proj(y)
        z = self.attn_norm(z + self_attention(self.attn, z))
        return self.ffn_norm(z + self.fc2(torch.relu(self.fc1(z))))


class Transformer(_SparseOp):
    """``transformer`` (NASRec): ``[B, N, E] -> [B, W, E]``.

    1. ``Linear(N, W, bias=not ln)`` over the field axis (+ LayerNorm(W) over it if
       ``ctx.layernorm``), always applied (also when ``N == W``), no activation.
    2. ``z = LN(z + MHA(z, z, z))`` with ``nn.MultiheadAttention(E, h)``, ``h`` the largest of
       8, 4, 2, 1 dividing E.
    3. ``z = LN(z + Linear(E, E)(relu(Linear(E, E)(z))))`` (ReLU whatever ``ctx.activation``).

    Both residual LayerNorms are always present, their weights initialised to 0.17 (NASRec's
    ``LN_INIT``). FLOPs count the attention products ``Q K^T`` and ``A V`` (``2 W^2 E`` each)
    besides the projections. On CPU, ``torch.utils.flop_counter`` does not count the fused
    attention kernel (``_scaled_dot_product_flash_attention_for_cpu``) nor the inference fast
    path of ``nn.MultiheadAttention``; the tests add a formula for the former.
    """

    name = "transformer"

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        n, e, w = self._dims(inputs, width, ctx)
        mm, flops, params = _field_projection_cost(n, w, e, ctx.layernorm)
        rows = w * e  # values per [W, E] activation
        heads = attention_heads(e)
        # attention: q/k/v and out projections, Q K^T and A V
        mm += 2 * 4 * w * e * e + 2 * 2 * w * w * e
        flops += 4 * rows + rows + 5 * heads * w * w  # 4 biases, q scaling, softmax
        params += 4 * e * e + 4 * e
        # feed-forward: two E x E layers
        mm += 2 * 2 * w * e * e
        flops += 2 * rows + activation_flops("relu", rows)
        params += 2 * (e * e + e)
        ln_flops, ln_params = layer_norm_cost(e, rows=w)
        flops += 2 * rows + 2 * ln_flops  # two residual adds and LayerNorms
        params += 2 * ln_params
        return OpCost(mm, mm + flops, params, *io_bytes(inputs, TensorSpec.sparse(w, e)))

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        n, e, w = self._dims(inputs, width, ctx)
        return TransformerModule(n, w, e, ctx)
