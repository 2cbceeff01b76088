"""The sum of a backward kernel's partial rows, as one Triton kernel.

The fused LayerNorm and encoder backwards accumulate their weight gradients per program and
write one partial row each (``[P, C]`` float32, P up to ~530); the host then sums the rows.
PyTorch's reduction over the outer dim ran as a two-stage ``reduce_kernel`` of ~6-11 us for
``[512, 64]`` to ``[512, 1024]`` on an H200: with two per LayerNorm backward, ~40 kernels and
~0.35 ms of a ``nasrec_full`` segmented step at B=4096. :func:`sum_partials` is one pass: a
program per block of columns loops over the rows.
"""

from __future__ import annotations

import torch

try:  # only for the CUDA kernel; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["sum_partials"]

_COLS, _ROWS = 32, 128  # a program's block of columns, and the rows it adds per iteration


def sum_partials(part: torch.Tensor) -> torch.Tensor:
    """``part.sum(0)`` of a float32 ``[P, C]`` tensor of partial sums.

    Args:
        part: ``[P, C]``, one row per program of a backward kernel.

    Returns:
        ``[C]`` float32 (on CPU, or without Triton, ``part.sum(0)``).
    """
    if part.dim() != 2:
        raise ValueError(f"sum_partials: part must be [P, C], got shape {tuple(part.shape)}")
    if triton is None or not part.is_cuda or part.dtype != torch.float32:
        return part.sum(0)
    part = part.contiguous()
    p, c = part.shape
    out = part.new_empty(c)
    if c:
        _sum_rows[(triton.cdiv(c, _COLS),)](part, out, p, c, COLS=_COLS, ROWS=_ROWS)
    return out


if triton is not None:
    @triton.jit
    def _sum_rows(part_ptr, out_ptr, P, C, COLS: tl.constexpr, ROWS: tl.constexpr):
        cols = tl.program_id(0) * COLS + tl.arange(0, COLS)
        cok = cols < C
        acc = tl.zeros([ROWS, COLS], dtype=tl.float32)
        r = 0
        while r < P:  # not range(0, P, ROWS): Triton's interpreter cannot range over P
            rows = r + tl.arange(0, ROWS)
            ok = (rows < P)[:, None] & cok[None, :]
            acc += tl.load(part_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=ok,
                           other=0.0)
            r += ROWS
        tl.store(out_ptr + cols, tl.sum(acc, axis=0), mask=cok)
