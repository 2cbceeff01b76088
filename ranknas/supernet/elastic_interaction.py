"""Elastic interaction ops: ``dot-product`` and ``fm``.

Slicing per op:

- ``dot-product``: the dense port's projection to E is ``Linear(D, E)`` with columns indexed by
  the dense port's storage positions (rows are E, fixed). The field-axis compression to
  ``K = round(sqrt(2W))`` fields depends on the width, so it gets its own widest weights
  ``[K_max, N-storage]`` (K_max from the widest integer width) and width ``W`` takes rows
  ``[:K]`` and the sparse port's field positions; its LayerNorm is sliced to ``[:K]``. The pair
  projection ``Linear(pairs, W)`` takes ``[:W, :pairs]``: ``tril_indices`` lists the pairs of
  ``n`` fields first among those of any ``n' > n``, so pair positions are stable across widths.
  Each projection is skipped exactly when the standalone op skips it: the dense one when
  ``D == E``, the compression when ``K == N`` (always for width None), the pair projection
  when ``pairs == W``; the output LayerNorm is applied whenever the width is an integer.
- ``fm``: parameter-free ``(sum_n y)^2 - sum_n y^2`` over E, then ``Linear(E, W)`` sliced to
  ``[:W]`` (+ LayerNorm ``[:W]``), skipped when ``W == E`` as in the standalone op.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ranknas.supernet.elastic_base import (
    ElasticOp,
    ElasticSpec,
    SlicedLinear,
    SlicedLinearNorm,
    SlicedNorm,
    SourceLayout,
    register_elastic,
)


def kept_fields(width: int) -> int:
    """``K = round(sqrt(2W))``: fields kept by NASRec's dot-product compression."""
    return round(math.sqrt(2 * width))


@register_elastic
class ElasticDotProduct(ElasticOp):
    """``dot-product``: ``([x [B, D],] y [B, N, E]) -> [B, pairs]`` (width None) or ``[B, W]``."""

    op_name = "dot-product"

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        e, ln = spec.ctx.embedding_dim, spec.ctx.layernorm
        dense = "dense" in spec.in_sizes
        self.dense_proj = (SlicedLinearNorm(e, spec.in_sizes["dense"], spec.in_bounds["dense"], ln)
                           if dense else None)
        self.field_proj = self.out_proj = self.out_norm = None
        if spec.has_int_width:
            k = max(kept_fields(w) for w in spec.widths if w is not None)
            self.field_proj = SlicedLinearNorm(k, spec.in_sizes["sparse"], spec.in_bounds["sparse"],
                                          ln)
            n = k + dense
            pairs = max(1, n * (n - 1) // 2)
            self.out_proj = SlicedLinear(spec.width_max, pairs, pairs, bias=not ln)
            self.out_norm = SlicedNorm(spec.width_max) if ln else None
        self._tril: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _pairs(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (n, str(device))
        if key not in self._tril:
            rows, cols = torch.tril_indices(n, n, offset=-1, device=device)
            self._tril[key] = (rows, cols)
        return self._tril[key]

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        e = self.ctx.embedding_dim
        y = inputs["sparse"]
        fields = y.shape[1]
        kept = fields if width is None else kept_fields(width)
        if kept != fields:
            y = self.field_proj(y.transpose(1, 2), kept, layout["sparse"].cols).transpose(1, 2)
        if "dense" in inputs:
            x = inputs["dense"]
            if x.shape[1] != e:
                x = self.dense_proj(x, e, layout["dense"].cols)
            y = torch.cat([x.unsqueeze(1), y], dim=1)
        rows, cols = self._pairs(y.shape[1], y.device)
        out = torch.bmm(y, y.transpose(1, 2))[:, rows, cols]
        if width is None:
            return out
        if out.shape[1] != width:
            out = self.out_proj(out, slice(0, width), slice(0, out.shape[1]))
        return self.out_norm(out, width) if self.out_norm is not None else out

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        e = self.ctx.embedding_dim
        fields = layout["sparse"].spec.width
        kept = fields if width is None else kept_fields(width)
        out: dict[str, torch.Tensor] = {}
        if "dense" in layout and layout["dense"].spec.width != e:
            out.update(self.dense_proj.export(e, layout["dense"].cols, "dense_proj."))
        if kept != fields:
            out.update(self.field_proj.export(kept, layout["sparse"].cols, "field_proj."))
        if width is not None:
            n = kept + ("dense" in layout)
            pairs = n * (n - 1) // 2
            if pairs != width:
                out.update(self.out_proj.export(slice(0, width), slice(0, pairs), "out_proj."))
            if self.out_norm is not None:
                out.update(self.out_norm.export(width, "out_norm."))
        return out


@register_elastic
class ElasticFM(ElasticOp):
    """``fm``: ``(sum_n y)^2 - sum_n y^2`` over ``[B, N, E]``, then ``Linear(E, W)[:W]``."""

    op_name = "fm"

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        e = spec.ctx.embedding_dim
        projects = any(w is not None and w != e for w in spec.widths)
        self.proj = (SlicedLinearNorm(spec.width_max, e, e, spec.ctx.layernorm) if projects
                     else None)

    def _width(self, width: int | None) -> int:
        return self.ctx.embedding_dim if width is None else int(width)

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        """``x [B, N, E] -> [B, W]`` (``[B, E]`` for width None or E)."""
        y = inputs["x"]
        total = y.sum(dim=1)
        out = total * total - (y * y).sum(dim=1)
        w = self._width(width)
        if w != self.ctx.embedding_dim:
            out = self.proj(out, w, slice(0, self.ctx.embedding_dim))
        return out

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        w = self._width(width)
        if w == self.ctx.embedding_dim:
            return {}
        return self.proj.export(w, slice(0, self.ctx.embedding_dim), "proj.")
