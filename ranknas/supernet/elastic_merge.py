"""Elastic merge and conversion ops: ``concat``, ``concat-3d``, ``add``, ``dense-to-sparse``.

- ``concat`` / ``concat-3d`` have no parameters; their output is their merged input, so they
  are *pass-through*: a consumer lays its storage out per original source behind them (the
  NASRec ``bK.dense_in`` / ``bK.sparse_in`` nodes thus behave like NASRec's own concatenation
  of every candidate input).
- ``add`` has no parameters; its output is indexed by position.
- ``dense-to-sparse``: ``Linear(D, W*E)`` takes rows ``[:W*E]`` and the input's storage
  positions; LayerNorm over ``W*E`` is sliced to ``[:W*E]``; skipped (a pure reshape) exactly
  when ``D == W*E``, as in the standalone op.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ranknas.spaces.ops.dense import pad_features
from ranknas.supernet.elastic_base import (
    ElasticOp,
    ElasticSpec,
    SlicedLinearNorm,
    SourceLayout,
    need_width,
    register_elastic,
)


class _PassThrough(ElasticOp):
    """No parameters; the output is the merged input of port ``x``."""

    passthrough = True

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        return inputs["x"]

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        return {}


@register_elastic
class ElasticConcat(_PassThrough):
    """``concat``: dense sources concatenated along features."""

    op_name = "concat"


@register_elastic
class ElasticConcat3d(_PassThrough):
    """``concat-3d``: sparse sources concatenated along fields."""

    op_name = "concat-3d"


@register_elastic
class ElasticAdd(ElasticOp):
    """``add``: ``pad(a) + pad(b)`` at the wider width, or ``a`` alone."""

    op_name = "add"

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        a, b = inputs["a"], inputs.get("b")
        if b is None:
            return a
        wide = max(a.shape[1], b.shape[1])
        return pad_features(a, wide) + pad_features(b, wide)

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        return {}


@register_elastic
class ElasticDenseToSparse(ElasticOp):
    """``dense-to-sparse``: ``[B, D] -> [B, W, E]`` by ``LN(Linear(D, W*E))`` or a reshape."""

    op_name = "dense-to-sparse"

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        out = spec.width_max * spec.ctx.embedding_dim
        self.proj = SlicedLinearNorm(out, spec.in_sizes["x"], spec.in_bounds["x"],
                                     spec.ctx.layernorm)

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        x, dim = inputs["x"], self.ctx.embedding_dim
        w = need_width(self, width)
        if x.shape[1] != w * dim:
            x = self.proj(x, w * dim, layout["x"].cols)
        return x.reshape(x.shape[0], w, dim)

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        out = need_width(self, width) * self.ctx.embedding_dim
        if layout["x"].spec.width == out:
            return {}
        return self.proj.export(out, layout["x"].cols, "proj.")
