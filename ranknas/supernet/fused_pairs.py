"""The masked dot-product's pairwise products as one op: forward and backward.

:class:`~ranknas.supernet.masked_interaction.MaskedDotProduct` stacks the projected dense row
``d [B, E]`` on top of the fields ``y [B, F, E]`` (or, when the path has no dense input, a
zero row below them), takes every product ``Z Z^T [B, n, n]`` and keeps the ``n (n - 1) / 2``
pairs below the diagonal in ``tril_indices`` order, zero-padded to an aligned width for the
output projection. As PyTorch ops that is two concatenations, a select, a batched GEMM on CUDA
cores, a gather and a pad forward, and their backwards (a zero fill, an ``index_add_``, two
batched GEMMs): ~250 us of a ~1 ms dot-product at B=4096 on an H200, for tensors of
``[B, 46, 16]`` and ``[B, 1040]``.

:func:`pairwise_dots` is that whole stretch. On CUDA (``n <= 64``, E a power of two >= 16)
one Triton program per example builds ``Z`` in registers from ``d``, ``y`` and the path's
dense flag, multiplies it by itself in float32 (``ieee``: the GEMMs it replaces ran float32
too) and writes the pairs; the backward program reads the pair gradients ``G`` as a lower
triangle and writes ``dZ = (G + G^T) Z`` back to ``d`` and ``y``. Elsewhere the PyTorch ops
above run (:func:`pairs_reference`).
"""

from __future__ import annotations

from typing import Any

import torch

try:  # only for the CUDA kernels; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["ENABLED", "pairs_reference", "pairwise_dots"]

#: Whether :func:`pairwise_dots` runs its kernels where they fit (False: always the reference).
ENABLED = True
_MAX_ROWS = 64  # rows of Z a program holds (n = fields + dense)


def pairs_reference(y: torch.Tensor, d: torch.Tensor | None, on: torch.Tensor | None,
                    pair_index: torch.Tensor, cols: int) -> torch.Tensor:
    """:func:`pairwise_dots` as PyTorch ops."""
    if d is not None:
        d = d.unsqueeze(1)
        # without a dense input the fields start at row 0, and a zero row ends them
        y = torch.where(on > 0, torch.cat([d, y], 1), torch.cat([y, torch.zeros_like(d)], 1))
    pairs = torch.bmm(y, y.transpose(1, 2)).flatten(1).index_select(1, pair_index)
    extra = cols - pairs.shape[1]
    return torch.nn.functional.pad(pairs, [0, extra]) if extra else pairs


def pairwise_dots(y: torch.Tensor, d: torch.Tensor | None, on: torch.Tensor | None,
                  pair_index: torch.Tensor, cols: int) -> torch.Tensor:
    """Products of the pairs of rows of ``Z = [d; y]`` (``on``) or ``[y; 0]``.

    Args:
        y: Fields ``[B, F, E]``.
        d: The dense row ``[B, E]``, or None (no dense port: ``Z = y``).
        on: ``[1]`` 0/1: whether the path has a dense input (with ``d``).
        pair_index: ``[P]`` flattened ``[n, n]`` positions of the pairs, ``n = F + (d is not
            None)``, in ``torch.tril_indices(n, n, -1)`` order (the kernels assume it).
        cols: Output width ``>= P``; columns from ``P`` on are zero.

    Returns:
        ``[B, cols]``: ``Z_i . Z_j`` for ``j < i`` in pair order, then zeros.
    """
    n = y.shape[1] + (d is not None)
    if not _fits(y, d, n):
        return pairs_reference(y, d, on, pair_index, cols)
    if pair_index.shape[0] != n * (n - 1) // 2 or cols < pair_index.shape[0]:
        raise ValueError(f"pairwise_dots: {pair_index.shape[0]} pairs for {n} rows, and cols "
                         f"{cols}: pass every pair of tril_indices(n, n, -1), cols >= pairs")
    return _Pairs.apply(y, d, on, cols)


def _fits(y: torch.Tensor, d: torch.Tensor | None, n: int) -> bool:
    e = y.shape[-1]
    return (ENABLED and triton is not None and y.is_cuda and y.dtype == torch.float32
            and (d is None or d.dtype == torch.float32) and 2 <= n <= _MAX_ROWS
            and e >= 16 and e & (e - 1) == 0 and not torch.compiler.is_compiling())


class _Pairs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, d: torch.Tensor | None, on: torch.Tensor | None,
                cols: int) -> torch.Tensor:
        y, dense = y.contiguous(), d is not None
        d = d.contiguous() if dense else y  # y: a dummy pointer
        on = on.float().contiguous() if dense else y
        b, f, e = y.shape
        out = y.new_empty(b, cols)
        meta = _meta(f + dense, e, dense)
        pairs = (f + dense) * (f + dense - 1) // 2
        _pairs_fwd[(b,)](y, d, on, out, f, f + dense, pairs, cols,
                         PAD=triton.next_power_of_2(max(1, cols - pairs)), **meta)
        ctx.save_for_backward(y, d, on)
        ctx.dense = dense
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        y, d, on = ctx.saved_tensors
        b, f, e = y.shape
        dy = torch.empty_like(y)
        dd = torch.empty_like(d) if ctx.dense else dy
        _pairs_bwd[(b,)](y, d, on, grad.contiguous(), dd, dy, f, f + ctx.dense, grad.shape[1],
                         **_meta(f + ctx.dense, e, ctx.dense))
        return dy, dd if ctx.dense else None, None, None


def _meta(n: int, e: int, dense: bool) -> dict[str, Any]:
    return {"E": e, "NP": max(16, triton.next_power_of_2(n)), "DENSE": dense,
            "num_warps": 4}


if triton is not None:
    @triton.jit
    def _rows(y_ptr, d_ptr, on_ptr, b, f, E: tl.constexpr, NP: tl.constexpr,
              DENSE: tl.constexpr):
        """``Z [NP, E]`` of example ``b`` (zero rows past n), and each row's field
        (-1: the dense row)."""
        i = tl.arange(0, NP)
        e = tl.arange(0, E)
        field = i
        if DENSE:
            on = tl.load(on_ptr) > 0
            field = tl.where(on, i - 1, i)
        ok = (field >= 0) & (field < f)
        z = tl.load(y_ptr + (b * f + field[:, None]) * E + e[None, :], mask=ok[:, None],
                    other=0.0)
        if DENSE:
            dense = tl.load(d_ptr + b * E + e)
            z = tl.where((field < 0)[:, None], dense[None, :], z)
        return z, field

    @triton.jit
    def _tril(n, NP: tl.constexpr):
        """Offsets of the pairs ``(r, c)``, ``c < r < n``, in pair order, and their mask."""
        r = tl.arange(0, NP)[:, None]
        c = tl.arange(0, NP)[None, :]
        return r * (r - 1) // 2 + c, (c < r) & (r < n)

    @triton.jit
    def _pairs_fwd(y_ptr, d_ptr, on_ptr, out_ptr, f, n, pairs, cols, E: tl.constexpr,
                   NP: tl.constexpr, DENSE: tl.constexpr, PAD: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        z, _ = _rows(y_ptr, d_ptr, on_ptr, b, f, E, NP, DENSE)
        s = tl.dot(z, tl.trans(z), input_precision="ieee")
        idx, ok = _tril(n, NP)
        tl.store(out_ptr + b * cols + idx, s, mask=ok)
        pad = pairs + tl.arange(0, PAD)
        tl.store(out_ptr + b * cols + pad, tl.zeros([PAD], dtype=tl.float32), mask=pad < cols)

    @triton.jit
    def _pairs_bwd(y_ptr, d_ptr, on_ptr, g_ptr, dd_ptr, dy_ptr, f, n, cols, E: tl.constexpr,
                   NP: tl.constexpr, DENSE: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        z, field = _rows(y_ptr, d_ptr, on_ptr, b, f, E, NP, DENSE)
        idx, ok = _tril(n, NP)
        g = tl.load(g_ptr + b * cols + idx, mask=ok, other=0.0)
        # S = Z Z^T and only its lower triangle is used: dZ = (G + G^T) Z
        dz = (tl.dot(g, z, input_precision="ieee")
              + tl.dot(tl.trans(g), z, input_precision="ieee"))
        e = tl.arange(0, E)
        rows = (field >= 0) & (field < f)
        tl.store(dy_ptr + (b * f + field[:, None]) * E + e[None, :], dz, mask=rows[:, None])
        if DENSE:
            dd = tl.sum(tl.where((field < 0)[:, None], dz, 0.0), axis=0)
            tl.store(dd_ptr + b * E + e, dd)
