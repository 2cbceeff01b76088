"""Merge and conversion ops: name a merge point, add two dense tensors, turn dense into fields.

Sources of one port are merged (concatenated, converted to the port's kind) *before* an op runs,
so ``concat`` and ``concat-3d`` are identities: they exist so a graph can name the merge.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ranknas.spaces.ops.base import (
    Kind,
    OpContext,
    OpCost,
    Operator,
    Port,
    TensorSpec,
)
from ranknas.spaces.ops.dense import io_bytes, norm_or_bias_cost, pad_features, resolve_ports


class _Identity(Operator):
    """An op whose output is its one merged input."""

    width_mode = "none"

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        return resolve_ports(self, inputs, ctx)["x"]

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        out = self.output_spec(inputs, width, ctx)
        # No arithmetic; the bytes are those of the concatenation that feeds the op.
        return OpCost(0, 0, 0, *io_bytes(inputs, out))

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        self.output_spec(inputs, width, ctx)
        return nn.Identity()


class Concat(_Identity):
    """``concat``: dense sources concatenated along features, ``[B, D1 + D2 + ...]``."""

    name = "concat"
    ports = (Port("x", Kind.DENSE),)
    out_kind = Kind.DENSE


class Concat3d(_Identity):
    """``concat-3d``: sparse sources concatenated along fields, ``[B, N1 + N2 + ..., E]``."""

    name = "concat-3d"
    ports = (Port("x", Kind.SPARSE),)
    out_kind = Kind.SPARSE


class AddModule(nn.Module):
    """``pad(a) + pad(b)`` at the wider width; just ``a`` when ``b`` is absent."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if b is None:
            return a
        return pad_features(a, self.width) + pad_features(b, self.width)


class Add(Operator):
    """``add``: ``[B, Da] (+ [B, Db]) -> [B, max(Da, Db)]``, no parameters.

    The narrower input is zero-padded on the right to the wider width, then the two are added
    (e.g. an FM term onto a dense output). With ``b`` absent it passes ``a`` through. Each port
    takes exactly one source, since several sources of a port would be concatenated, not added.
    """

    name = "add"
    ports = (Port("a", Kind.DENSE, many=False), Port("b", Kind.DENSE, many=False, optional=True))
    out_kind = Kind.DENSE
    width_mode = "none"

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        specs = resolve_ports(self, inputs, ctx)
        return TensorSpec.dense(max(s.width for s in specs.values() if s is not None))

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        out = self.output_spec(inputs, width, ctx)
        adds = out.width if len(inputs) == 2 else 0
        return OpCost(0, adds, 0, *io_bytes(inputs, out))

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        return AddModule(self.output_spec(inputs, width, ctx).width)


class DenseToSparseModule(nn.Module):
    """``[B, D] -> [B, W, E]``: ``LN(Linear(D, W*E))`` then a view, or just the view."""

    def __init__(self, in_dim: int, fields: int, dim: int, ctx: OpContext) -> None:
        super().__init__()
        self.fields, self.dim = fields, dim
        out = fields * dim
        if in_dim == out:
            self.proj: nn.Module = nn.Identity()
        else:
            fc = nn.Linear(in_dim, out, bias=not ctx.layernorm)
            self.proj = nn.Sequential(fc, nn.LayerNorm(out)) if ctx.layernorm else fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).reshape(x.shape[0], self.fields, self.dim)


class DenseToSparse(Operator):
    """``dense-to-sparse``: ``[B, D] -> [B, W, E]``, W new fields (NASRec uses 8).

    ``Linear(D, W*E)`` (bias only without LayerNorm), LayerNorm(W*E) if ``ctx.layernorm``, then
    reshaped into W fields; when ``D == W*E`` it is a pure reshape. No activation.
    """

    name = "dense-to-sparse"
    ports = (Port("x", Kind.DENSE),)
    out_kind = Kind.SPARSE

    def _dims(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> tuple[int, int, int]:
        """(D, W, E)."""
        self.check_width(width)
        x = resolve_ports(self, inputs, ctx)["x"]
        return x.width, int(width), ctx.embedding_dim

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        _, w, e = self._dims(inputs, width, ctx)
        return TensorSpec.sparse(w, e)

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        d, w, e = self._dims(inputs, width, ctx)
        out = TensorSpec.sparse(w, e)
        if d == w * e:
            return OpCost(0, 0, 0, *io_bytes(inputs, out))
        f, p = norm_or_bias_cost(w * e, ctx.layernorm)
        mm = 2 * d * w * e
        return OpCost(mm, mm + f, d * w * e + p, *io_bytes(inputs, out))

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        d, w, e = self._dims(inputs, width, ctx)
        return DenseToSparseModule(d, w, e, ctx)
