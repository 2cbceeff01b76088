"""Interaction ops: sparse (and dense) features in, dense ``[B, W]`` out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ranknas.errors import InvalidArchitecture
from ranknas.spaces.ops.base import (
    Kind,
    OpContext,
    OpCost,
    Operator,
    Port,
    TensorSpec,
    layer_norm_cost,
)
from ranknas.spaces.ops.dense import io_bytes, norm_or_bias_cost, resolve_ports


def _linear_norm(in_dim: int, out_dim: int, ctx: OpContext) -> nn.Module:
    """``Linear(in, out, bias=not ln)``, then LayerNorm(out) if ``ctx.layernorm``."""
    fc = nn.Linear(in_dim, out_dim, bias=not ctx.layernorm)
    return nn.Sequential(fc, nn.LayerNorm(out_dim)) if ctx.layernorm else fc


# -- dot-product ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _DotPlan:
    """Shapes through a dot-product op (per example)."""

    dense: int | None  # D, None when the dense port is absent
    fields: int  # N, sparse fields in
    dim: int  # E
    width: int | None
    kept: int  # K: sparse fields after the field-axis compression (N when none)
    pairs: int  # strictly-lower-triangular entries of the (K + 1 or K)^2 Gram matrix

    @property
    def interacting(self) -> int:
        return self.kept + (self.dense is not None)

    @property
    def out(self) -> int:
        return self.pairs if self.width is None else self.width

    @property
    def project_dense(self) -> bool:
        return self.dense is not None and self.dense != self.dim

    @property
    def compress(self) -> bool:
        return self.kept != self.fields

    @property
    def project_out(self) -> bool:
        return self.width is not None and self.pairs != self.width


class DotProductModule(nn.Module):
    """Pairwise dot products of ``[x as 1 field] + y`` fields, as a ``[B, pairs or W]`` tensor."""

    def __init__(self, plan: _DotPlan, ctx: OpContext) -> None:
        super().__init__()
        self.has_dense = plan.dense is not None
        self.dense_proj = (_linear_norm(plan.dense, plan.dim, ctx) if plan.project_dense
                           else nn.Identity())
        self.field_proj = (_linear_norm(plan.fields, plan.kept, ctx) if plan.compress
                           else nn.Identity())
        self.out_proj = (nn.Linear(plan.pairs, plan.width, bias=not ctx.layernorm)
                         if plan.project_out else nn.Identity())
        self.out_norm = (nn.LayerNorm(plan.width) if ctx.layernorm and plan.width is not None
                         else nn.Identity())
        rows, cols = torch.tril_indices(plan.interacting, plan.interacting, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        """``([x [B, D],] y [B, N, E]) -> [B, pairs]`` (width None) or ``[B, W]``."""
        y = self.field_proj(tensors[-1].transpose(1, 2)).transpose(1, 2)  # [B, K, E]
        if self.has_dense:
            x = self.dense_proj(tensors[0])  # [B, E]
            y = torch.cat([x.unsqueeze(1), y], dim=1)  # [B, K + 1, E]
        gram = torch.bmm(y, y.transpose(1, 2))
        return self.out_norm(self.out_proj(gram[:, self.rows, self.cols]))


class DotProduct(Operator):
    """``dot-product``: pairwise field interaction, ``([B, D],) [B, N, E] -> [B, out]``.

    The dense input (optional port) becomes one extra field: ``Linear(D, E)`` (bias only without
    LayerNorm, then LayerNorm(E) if ``ctx.layernorm``) when ``D != E``, else used as is.

    - width None: classic DLRM. ``T = cat([x], y)`` with ``n = N (+1)`` fields, ``Z = T T^T``,
      and the output is the ``n(n-1)/2`` strictly-lower-triangular entries of ``Z``; no
      projection, no LayerNorm.
    - width ``W``: NASRec. The field axis is first compressed to ``K = round(sqrt(2W))`` fields
      (``Linear(N, K)`` over ``[B, E, N]`` + LayerNorm(K) if ln) unless ``N == K``; the
      ``n(n-1)/2`` pairs of the ``K (+1)`` fields are projected by ``Linear(pairs, W)`` unless
      ``pairs == W``; then LayerNorm(W) if ln (even without the projection, as NASRec).

    Raises InvalidArchitecture with fewer than two fields to interact.
    """

    name = "dot-product"
    ports = (Port("dense", Kind.DENSE, optional=True), Port("sparse", Kind.SPARSE))
    out_kind = Kind.DENSE
    width_mode = "optional"

    def _plan(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> _DotPlan:
        self.check_width(width)
        specs = resolve_ports(self, inputs, ctx)
        dense = None if specs["dense"] is None else specs["dense"].width
        sparse = specs["sparse"]
        total = sparse.width + (dense is not None)
        if total < 2:
            raise InvalidArchitecture(self.name, f"needs at least 2 fields to interact, got "
                                                 f"{sparse} sparse and no dense input")
        kept = sparse.width if width is None else round(math.sqrt(2 * int(width)))
        n = kept + (dense is not None)
        if n < 2:
            raise InvalidArchitecture(self.name, f"width {width} compresses {sparse} to {kept} "
                                                 f"field(s); at least 2 must interact")
        return _DotPlan(dense, sparse.width, sparse.dim, None if width is None else int(width),
                        kept, n * (n - 1) // 2)

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        return TensorSpec.dense(self._plan(inputs, width, ctx).out)

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        plan = self._plan(inputs, width, ctx)
        e, ln = plan.dim, ctx.layernorm
        mm, extra, params = 0, 0, 0
        if plan.project_dense:
            f, p = norm_or_bias_cost(e, ln)
            mm, extra, params = mm + 2 * plan.dense * e, extra + f, params + plan.dense * e + p
        if plan.compress:
            f, p = norm_or_bias_cost(plan.kept, ln, rows=e)
            mm += 2 * plan.fields * plan.kept * e
            extra, params = extra + f, params + plan.fields * plan.kept + p
        mm += 2 * plan.interacting * plan.interacting * e  # the Gram matrix (bmm)
        if plan.project_out:
            mm, params = mm + 2 * plan.pairs * plan.width, params + plan.pairs * plan.width
            if not ln:
                extra, params = extra + plan.width, params + plan.width
        if ln and plan.width is not None:
            f, p = layer_norm_cost(plan.width)
            extra, params = extra + f, params + p
        return OpCost(mm, mm + extra, params,
                      *io_bytes(inputs, TensorSpec.dense(plan.out)))

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        return DotProductModule(self._plan(inputs, width, ctx), ctx)


# -- fm ------------------------------------------------------------------------------------
class FMModule(nn.Module):
    """``(sum_n y)^2 - sum_n y^2``: ``[B, N, E] -> [B, E]``, then an optional projection."""

    def __init__(self, dim: int, width: int, ctx: OpContext) -> None:
        super().__init__()
        self.proj = _linear_norm(dim, width, ctx) if width != dim else nn.Identity()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        total = y.sum(dim=1)
        return self.proj(total * total - (y * y).sum(dim=1))


class FactorizationMachine(Operator):
    """``fm``: second-order factorization machine, ``[B, N, E] -> [B, E or W]`` (NASRec form).

    ``(sum_n y_n)^2 - sum_n y_n^2`` element-wise over E, i.e. ``2 * sum_{i<j} y_i * y_j``
    (no 0.5 factor, no reduction over E). Width None or ``E``: output E; width ``W != E``:
    ``Linear(E, W)`` (bias only without LayerNorm), then LayerNorm(W) if ``ctx.layernorm``.
    """

    name = "fm"
    ports = (Port("x", Kind.SPARSE),)
    out_kind = Kind.DENSE
    width_mode = "optional"

    def _dims(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> tuple[int, int, int]:
        """(N, E, out width)."""
        self.check_width(width)
        x = resolve_ports(self, inputs, ctx)["x"]
        return x.width, x.dim, x.dim if width is None else int(width)

    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        return TensorSpec.dense(self._dims(inputs, width, ctx)[2])

    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        n, e, w = self._dims(inputs, width, ctx)
        mm, params = 0, 0
        flops = 3 * n * e + 2 * e  # sum, squares, sum of squares; square of sum, subtract
        if w != e:
            f, p = norm_or_bias_cost(w, ctx.layernorm)
            mm, params = 2 * e * w, e * w + p
            flops += f
        return OpCost(mm, mm + flops, params, *io_bytes(inputs, TensorSpec.dense(w)))

    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        _, e, w = self._dims(inputs, width, ctx)
        return FMModule(e, w, ctx)
