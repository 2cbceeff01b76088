"""Elastic dense ops: ``linear-2d``, ``dcn-cross``, ``sigmoid-gating``, ``sum``.

Slicing per op (rows: output side, cols: the port's storage positions, see
:mod:`ranknas.supernet.elastic_base`):

- ``linear-2d``: ``fc.weight[:W, cols]``, ``fc.bias[:W]`` (without LayerNorm), LayerNorm
  ``[:W]``, activation. Each stacked layer is its own elastic op; layers after the first read the
  previous layer's output by position.
- ``dcn-cross``: the output has the input's layout (``x * (W x + b) + x``), so both sides of
  ``W`` are indexed by the input's storage positions: full rank ``proj.weight[cols][:, cols]``,
  ``proj.bias[cols]``; low rank ``U[:r, cols]`` and ``V[cols, :r]``, ``b[cols]``. The full-rank
  and low-rank weights are separate (allocated only if the block offers width None,
  respectively an integer rank).
- ``sigmoid-gating`` and ``sum``: ``left`` and ``right`` are single sources zero-padded to
  ``P = max(Dl, Dr)``, and the gate, the gated product and the projection all act on those
  padded positions, so their weights are indexed by *position* ``[:P]`` rather than by source
  (a per-source layout would need a ``P x P`` gate per pair of sources). The projection is
  skipped exactly when the standalone op skips it (``P == W``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ranknas.spaces.ops.dense import pad_features
from ranknas.supernet.elastic_base import (
    ElasticOp,
    ElasticSpec,
    SlicedLinear,
    SlicedNorm,
    SourceLayout,
    activate,
    need_width,
    positions,
    register_elastic,
)


@register_elastic
class ElasticLinear2d(ElasticOp):
    """``linear-2d``: ``act(LN(x W[:W, cols]^T))`` (bias instead of LN without layernorm)."""

    op_name = "linear-2d"

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        ln = spec.ctx.layernorm
        self.fc = SlicedLinear(spec.width_max, spec.in_sizes["x"], spec.in_bounds["x"],
                               bias=not ln)
        self.norm = SlicedNorm(spec.width_max) if ln else None

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        """``x [B, D] -> [B, W]``."""
        w = need_width(self, width)
        y = self.fc(inputs["x"], slice(0, w), layout["x"].cols)
        if self.norm is not None:
            y = self.norm(y, w)
        return activate(y, self.ctx.activation)

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        w = need_width(self, width)
        out = self.fc.export(slice(0, w), layout["x"].cols, "fc.")
        if self.norm is not None:
            out.update(self.norm.export(w, "norm."))
        return out


@register_elastic
class ElasticDcnCross(ElasticOp):
    """``dcn-cross``: ``x * (W x + b) + x`` with ``W`` full (width None) or ``U V^T`` (rank)."""

    op_name = "dcn-cross"

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        size, fan = spec.in_sizes["x"], spec.in_bounds["x"]
        self.full = SlicedLinear(size, size, fan) if None in spec.widths else None
        if spec.has_int_width:
            self.down = SlicedLinear(spec.width_max, size, fan, bias=False)
            self.up = SlicedLinear(size, spec.width_max, spec.width_max)
        else:
            self.down = self.up = None

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        """``x [B, D] -> [B, D]``."""
        x, cols = inputs["x"], layout["x"].cols
        if width is None:
            proj = self.full(x, cols, cols)
        else:
            proj = self.up(self.down(x, slice(0, width), cols), cols, slice(0, width))
        return x * proj + x

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        cols = layout["x"].cols
        if width is None:
            return self.full.export(cols, cols, "proj.")
        r = slice(0, int(width))
        return {**self.down.export(r, cols, "proj.0."), **self.up.export(cols, r, "proj.1.")}


class _Binary(ElasticOp):
    """Shared shapes of the two binary ops: position-indexed ``P`` and output width ``W``."""

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        self.padded = spec.positional("left", "right")
        self.fan = min(max(spec.in_bounds["left"], spec.in_bounds["right"]), self.padded)

    @staticmethod
    def _p(layout: SourceLayout) -> int:
        return max(layout["left"].spec.width, layout["right"].spec.width)


@register_elastic
class ElasticSigmoidGating(_Binary):
    """``sigmoid-gating``: ``LN(proj(sigmoid(G left + g) * right))`` on positions ``[:P]``."""

    op_name = "sigmoid-gating"

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        self.gate = SlicedLinear(self.padded, self.padded, self.fan)
        self.proj = SlicedLinear(spec.width_max, self.padded, self.fan)
        self.norm = SlicedNorm(spec.width_max) if spec.ctx.layernorm else None

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        """``left [B, Dl], right [B, Dr] -> [B, W]``."""
        w, p = need_width(self, width), self._p(layout)
        pos = positions(p, self.padded, inputs["left"].device)
        gate = torch.sigmoid(self.gate(pad_features(inputs["left"], p), pos, pos))
        y = gate * pad_features(inputs["right"], p)
        if p != w:
            y = self.proj(y, slice(0, w), pos)
        return self.norm(y, w) if self.norm is not None else y

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        w, p = need_width(self, width), self._p(layout)
        pos = positions(p, self.padded, self.gate.weight.device)
        out = self.gate.export(pos, pos, "gate.")
        if p != w:
            out.update(self.proj.export(slice(0, w), pos, "proj."))
        if self.norm is not None:
            out.update(self.norm.export(w, "norm."))
        return out


@register_elastic
class ElasticSum(_Binary):
    """``sum``: ``LN(proj(pad(left) + pad(right)))`` on positions ``[:P]``."""

    op_name = "sum"

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        ln = spec.ctx.layernorm
        self.proj = SlicedLinear(spec.width_max, self.padded, self.fan, bias=not ln)
        self.norm = SlicedNorm(spec.width_max) if ln else None

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        """``left [B, Dl], right [B, Dr] -> [B, W]``."""
        w, p = need_width(self, width), self._p(layout)
        y = pad_features(inputs["left"], p) + pad_features(inputs["right"], p)
        if p != w:
            y = self.proj(y, slice(0, w), positions(p, self.padded, y.device))
        return self.norm(y, w) if self.norm is not None else y

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        w, p = need_width(self, width), self._p(layout)
        out: dict[str, torch.Tensor] = {}
        if p != w:
            pos = positions(p, self.padded, self.proj.weight.device)
            out.update(self.proj.export(slice(0, w), pos, "proj."))
        if self.norm is not None:
            out.update(self.norm.export(w, "norm."))
        return out
