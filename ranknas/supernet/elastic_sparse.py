"""Elastic sparse ops: ``linear-3d`` and ``transformer``.

Slicing per op:

- ``linear-3d``: the field-axis ``Linear(N, W)`` takes rows ``[:W]`` and the sparse port's
  field positions; LayerNorm over the W fields is sliced to ``[:W]``; then the activation.
- ``transformer``: the field projection slices like ``linear-3d`` (no activation). Everything
  after it acts on the embedding dim E, which no architecture changes: the multi-head
  attention, the two E x E feed-forward layers and both residual LayerNorms are ordinary
  modules, shared whole by every width (a real ``nn.MultiheadAttention``, so the supernet takes
  the same kernels, fast path included, as the standalone op).

Each stacked layer (``depth``) is its own elastic op with its own widest weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ranknas.spaces.ops.sparse import LN_INIT, attention_heads, self_attention
from ranknas.supernet.elastic_base import (
    ElasticOp,
    ElasticSpec,
    SlicedLinear,
    SlicedNorm,
    SourceLayout,
    activate,
    need_width,
    register_elastic,
)


class _FieldProjection(nn.Module):
    """The widest field projection: ``Linear(N, W, bias=not ln)`` over ``[B, E, N]``, LN(W)."""

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__()
        ln = spec.ctx.layernorm
        self.fc = SlicedLinear(spec.width_max, spec.in_sizes["x"], spec.in_bounds["x"],
                               bias=not ln)
        self.norm = SlicedNorm(spec.width_max) if ln else None

    def forward(self, y: torch.Tensor, width: int, layout: SourceLayout,
                activation: str = "identity") -> torch.Tensor:
        """``[B, N, E] -> [B, W, E]``."""
        z = self.fc(y.transpose(1, 2), slice(0, width), layout["x"].cols)
        if self.norm is not None:
            z = self.norm(z, width)
        return activate(z, activation).transpose(1, 2)

    def export(self, width: int, layout: SourceLayout, prefix: str) -> dict[str, torch.Tensor]:
        out = self.fc.export(slice(0, width), layout["x"].cols, f"{prefix}fc.")
        if self.norm is not None:
            out.update(self.norm.export(width, f"{prefix}norm."))
        return out


@register_elastic
class ElasticLinear3d(ElasticOp):
    """``linear-3d`` (EFC): field-axis FC ``[B, N, E] -> [B, W, E]``, LN, activation."""

    op_name = "linear-3d"

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        self.proj = _FieldProjection(spec)

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        return self.proj(inputs["x"], need_width(self, width), layout, self.ctx.activation)

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        return self.proj.export(need_width(self, width), layout, "")


def _module_state(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().clone() for k, v in module.state_dict().items()}


@register_elastic
class ElasticTransformer(ElasticOp):
    """``transformer``: sliced field projection, then a post-LN encoder layer over E."""

    op_name = "transformer"

    def __init__(self, spec: ElasticSpec) -> None:
        super().__init__(spec)
        dim = spec.ctx.embedding_dim
        self.proj = _FieldProjection(spec)
        self.attn = nn.MultiheadAttention(dim, attention_heads(dim), batch_first=True)
        self.attn_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        nn.init.constant_(self.attn_norm.weight, LN_INIT)
        nn.init.constant_(self.ffn_norm.weight, LN_INIT)

    def forward(self, inputs: Mapping[str, torch.Tensor], width: int | None,
                layout: SourceLayout) -> torch.Tensor:
        """``x [B, N, E] -> [B, W, E]``."""
        z = self.proj(inputs["x"], need_width(self, width), layout)
        z = self.attn_norm(z + self_attention(self.attn, z))
        return self.ffn_norm(z + self.fc2(torch.relu(self.fc1(z))))

    def export(self, width: int | None, layout: SourceLayout) -> dict[str, torch.Tensor]:
        out = self.proj.export(need_width(self, width), layout, "proj.")
        for name in ("attn", "attn_norm", "fc1", "fc2", "ffn_norm"):
            out.update(_module_state(getattr(self, name), f"{name}."))
        return out
