"""Fixed-shape (masked) forms of the interaction ops: dot-product and FM.

See :mod:`ranknas.supernet.masked_base` for the conventions; the other ops are in
:mod:`ranknas.supernet.masked_ops`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ranknas.spaces.materialized import MaterializedNode
from ranknas.supernet.elastic_base import ElasticOp
from ranknas.supernet.elastic_interaction import kept_fields
from ranknas.supernet.fused_fm import fm_interaction
from ranknas.supernet.fused_pairs import pairwise_dots
from ranknas.supernet.masked_base import (
    MaskedOp,
    Path,
    PortIn,
    Slot,
    Slots,
    Writer,
    aligned,
    branch,
    first,
    layer_norm,
    register_masked,
    resize,
    width_tail,
)


@register_masked
class MaskedDotProduct(MaskedOp):
    """Pairwise dot products of ``[dense;] fields`` over a fixed number of fields.

    Fields: the compression ``field_proj`` to ``K`` (kept mask) or the merged fields themselves,
    blended by ``K != N``; the dense projection blended by ``D != E``. Pairs of the padded
    fields that touch a zero field are zero, and ``tril_indices`` lists the pairs of ``n`` fields
    first, so the first ``pairs(n)`` columns are the sliced op's, in its order.
    """

    op_name = "dot-product"
    sizable = True

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        spec = self.spec
        self.none_ok, self.int_ok = None in spec.widths, spec.has_int_width
        self.k_max = (max(kept_fields(w) for w in spec.widths if w is not None)
                      if self.int_ok else 0)
        nb = ports["sparse"].bound
        self.fields = max(nb if self.none_ok else 0, self.k_max)
        self.has_dense = "dense" in ports
        n = self.fields + self.has_dense
        rows, cols = torch.tril_indices(n, n, offset=-1)
        self.pair_index = (rows * n + cols).tolist()  # into the flattened [n, n] products
        self._pair_index: dict[torch.device, torch.Tensor] = {}
        pairs = len(self.pair_index)
        self.out_size = max(pairs if self.none_ok else 0, spec.width_max)
        self.proj_fields = slots.f(1)  # K != N: compress the fields
        self.proj_dense = slots.f(1)  # D != E
        self.dense_on = slots.f(1, 1.0)
        self.proj_out = slots.f(1)  # pairs != W
        self.is_none = slots.f(1)  # width None: the pairs themselves
        self.kept = slots.width(self.k_max) if self.int_ok else None
        self.w = slots.width(spec.width_max) if self.int_ok else None
        self.branches = tuple(flag for flag, used in (
            (self.proj_fields, self.int_ok), (self.proj_dense, module.dense_proj is not None),
            (self.proj_out, self.int_ok), (self.is_none, self.int_ok and self.none_ok))
            if used)

    def encode(self, w: Writer, node: MaterializedNode) -> None:
        n_fields = self.in_width(node, "sparse")
        kept = n_fields if node.width is None else kept_fields(node.width)
        dense = self.in_width(node, "dense")
        w.flag(self.proj_fields, kept != n_fields)
        w.flag(self.proj_dense, dense != self.dim)
        w.flag(self.dense_on, dense > 0)
        w.flag(self.is_none, node.width is None)
        n = kept + (dense > 0)
        if node.width is not None:
            w.width(self.w, node.width)
            w.flag(self.proj_out, n * (n - 1) // 2 != node.width)
            if kept != n_fields:
                w.width(self.kept, kept)

    def field_major(self, fixed: Mapping[Slot, bool]) -> frozenset[str]:
        return frozenset({"sparse"}) if self.int_ok and fixed.get(self.proj_fields) else (
            frozenset())

    def _fields(self, y: torch.Tensor, path: Path) -> torch.Tensor:
        """``[B, Nb, E] -> [B, fields, E]``: compressed or as merged."""
        if not self.int_ok:
            return resize(y, self.fields)

        def compressed() -> torch.Tensor:
            fp = self.m.field_proj
            z = self.ports["sparse"].linear(y.transpose(1, 2), fp.fc, path)  # [B, E, K]
            return resize(width_tail(z, fp.norm, self.kept, path).transpose(1, 2), self.fields)

        return branch(path, self.proj_fields, compressed, lambda: resize(y, self.fields))

    def _dense(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        """``[B, Db] -> [B, E]``: projected or as is."""
        dp = self.m.dense_proj
        if dp is None:
            return resize(x, self.dim)

        def projected() -> torch.Tensor:
            z = self.ports["dense"].linear(x, dp.fc, path)
            return z if dp.norm is None else layer_norm(z, dp.norm.weight, dp.norm.bias)

        return branch(path, self.proj_dense, projected, lambda: resize(x, self.dim))

    def _pairs_on(self, device: torch.device) -> torch.Tensor:
        """The pair index as a tensor on ``device`` (made once: a CUDA graph capture may not
        copy it from the host)."""
        idx = self._pair_index.get(device)
        if idx is None:
            idx = self._pair_index[device] = torch.tensor(self.pair_index, device=device)
        return idx

    def forward(self, x: dict[str, torch.Tensor], path: Path,
                size: int | None = None) -> torch.Tensor:
        size = size or self.out_size
        d = self._dense(x["dense"], path) if self.has_dense else None
        on = self.dense_on.view(path) if self.has_dense else None
        # zero-padded to an aligned width for the projection: e.g. 1,035 pairs run cuBLAS's
        # unaligned kernels
        count = len(self.pair_index)
        pairs = pairwise_dots(self._fields(x["sparse"], path), d, on,
                              self._pairs_on(x["sparse"].device),
                              aligned(count) if self.int_ok else count)
        if not self.int_ok:
            return resize(pairs, size)
        op, rows = self.m.out_proj, min(size, self.width_max)
        k = aligned(op.weight.shape[1])

        def projected() -> torch.Tensor:
            return F.linear(resize(pairs, k), resize(first(op.weight, rows), k, 1),
                            None if op.bias is None else first(op.bias, rows))

        def sized() -> torch.Tensor:
            out = branch(path, self.proj_out, projected, lambda: resize(pairs, rows))
            return resize(width_tail(out, self.m.out_norm, self.w, path), size)

        if not self.none_ok:
            return sized()
        return branch(path, self.is_none, lambda: resize(pairs, size), sized)


@register_masked
class MaskedFM(MaskedOp):
    """``(sum_n y)^2 - sum_n y^2`` over ``[B, Nb, E]``, projected (blend) when ``W != E``."""

    op_name = "fm"
    sizable = True

    def __init__(self, module: ElasticOp, ports: dict[str, PortIn], slots: Slots) -> None:
        super().__init__(module, ports, slots)
        self.out_size = max(self.dim, self.spec.width_max)
        self.proj = slots.f(1)
        self.w = slots.width(self.out_size)
        self.pw = slots.width(self.spec.width_max) if module.proj is not None else None
        self.branches = (self.proj,) if module.proj is not None else ()

    def encode(self, w: Writer, node: MaterializedNode) -> None:
        width = self.dim if node.width is None else node.width
        w.flag(self.proj, width != self.dim)
        w.width(self.w, width)
        if width != self.dim:
            w.width(self.pw, width)

    def forward(self, x: dict[str, torch.Tensor], path: Path,
                size: int | None = None) -> torch.Tensor:
        size = size or self.out_size
        fm = fm_interaction(x["x"])  # [B, E]
        p = self.m.proj
        if p is None:
            return resize(fm, size) * self.w[0].view(path)[:size]

        def projected() -> torch.Tensor:
            rows = min(size, self.width_max)
            z = F.linear(fm, first(p.fc.weight, rows),
                         None if p.fc.bias is None else first(p.fc.bias, rows))
            return resize(width_tail(z, p.norm, self.pw, path), size)

        return branch(path, self.proj, projected,
                      lambda: resize(fm, size) * self.w[0].view(path)[:size])
