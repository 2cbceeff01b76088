"""Gathers and scatter-adds of fields along dim 1 of ``[R, N, E]`` tensors, one Triton
kernel each.

The segmented step gathers each port's merged input from its kind's buffer and, after the
op's backward, adds the input's gradient back at the same columns. PyTorch runs these as
``index_select`` (a ``gather`` over an index expanded to the output's shape) and ``index_add_``
along dim 1 (each index a strided slice of ``R * E`` elements): under the profiler, the
indexing kernels took ~1.7 ms of the GPU's 8.8 ms in a ``nasrec_full`` step at B=4096 on an
H200. Here each program moves a tile of rows by (column, E) elements, reads the ``[n]``
index once per tile, and adds with atomics, so repeated indices sum as in ``index_add_``.

- :func:`gather_cols`: ``src[:, index]``, differentiable (its backward a scatter-add into
  zeros);
- :func:`scatter_add_cols_`: ``dst[:, index] += src`` in place, optionally skipping one
  column (the buffers' zero column, whose gradient is never read: padding piles onto it).

Both run PyTorch's ops off CUDA, for 2-D tensors (features, weights: there PyTorch's were
as fast or faster on the H200, ``benchmarks/RESULTS.md``) and while ``torch.compile`` traces.
Atomics make the order of the CUDA sums, and so their last bits, vary from run to run; the
CPU ops are deterministic.
"""

from __future__ import annotations

from typing import Any

import torch

try:  # only for the CUDA kernels; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["gather_cols", "scatter_add_cols_"]

_TILE = 4096  # elements a program moves
_MAX_BLOCK = 512  # of them along a row
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _fits(*tensors: torch.Tensor) -> bool:
    # [R, N] tensors keep PyTorch's ops: on an H200 they were as fast (weights) or faster
    # (features, pairs) than these kernels; fields [R, N, E] were 1.6-1.8x faster here
    return (triton is not None and not torch.compiler.is_compiling()
            and all(t.is_cuda and t.dtype in _DTYPES and t.dim() > 2 for t in tensors))


def _check(name: str, index: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
    if src.dim() < 2 or src.shape[:1] != dst.shape[:1] or src.shape[2:] != dst.shape[2:]:
        raise ValueError(f"{name}: src and dst [R, N, *tail] must agree in R and tail; got "
                         f"src {tuple(src.shape)}, dst {tuple(dst.shape)}")
    if index.dim() != 1:
        raise ValueError(f"{name}: index must be 1-D, got shape {tuple(index.shape)}")


def gather_cols(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``src.index_select(1, index)``, differentiable in ``src``.

    Args:
        src: ``[R, N, *tail]``: fields ``[B, N, E]`` take the kernel, a 2-D ``src``
            PyTorch's ``index_select``.
        index: ``[n]`` integer columns of ``src``, repeats allowed.

    Returns:
        ``[R, n, *tail]``; its gradient adds back at ``index`` (repeats summed).
    """
    _check("gather_cols", index, src, src)
    if not _fits(src):
        return src.index_select(1, index)
    return _GatherCols.apply(src, index)


def scatter_add_cols_(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor,
                      skip: int | None = None) -> torch.Tensor:
    """``dst.index_add_(1, index, src)``; on CUDA, what ``index`` sends to column ``skip`` is
    dropped.

    Args:
        dst: ``[R, N, *tail]``, contiguous; modified in place.
        index: ``[n]`` integer columns of ``dst``, repeats allowed (summed).
        src: ``[R, n, *tail]``.
        skip: A column of ``dst`` whose value is never read: the CUDA kernel spares the
            atomics that would pile onto it (the CPU adds it as any other column).

    Returns:
        ``dst``.
    """
    _check("scatter_add_cols_", index, src, dst)
    if not dst.is_contiguous():
        raise ValueError("scatter_add_cols_: dst must be contiguous (it is written in place)")
    if not (_fits(src) and dst.is_cuda and dst.dtype == torch.float32):
        return dst.index_add_(1, index, src.to(dst.dtype))
    _launch(_scatter_add_kernel, dst, src.contiguous(), index, skip)
    return dst


class _GatherCols(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.src_shape = src.shape
        out = src.new_empty(src.shape[0], index.shape[0], *src.shape[2:])
        _launch(_gather_kernel, src.contiguous(), out, index, None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        dsrc = grad.new_zeros(ctx.src_shape, dtype=torch.float32)
        _launch(_scatter_add_kernel, dsrc, grad.contiguous(), index, None)
        return dsrc.to(grad.dtype), None


def _launch(kernel: Any, big: torch.Tensor, small: torch.Tensor, index: torch.Tensor,
            skip: int | None) -> None:
    """``kernel`` over ``big [R, N, *tail]`` and ``small [R, n, *tail]`` (both contiguous):
    a program per tile of rows by (column, tail) elements of ``small``."""
    r, n = small.shape[0], small.shape[1]
    tail = small[0, 0].numel() if n else 1
    width = n * tail
    if r == 0 or width == 0:
        return
    # a tile of several rows: each index is read once per tile, not once per element
    block = min(triton.next_power_of_2(width), _MAX_BLOCK)
    rows = max(1, _TILE // block)
    grid = (triton.cdiv(r, rows), triton.cdiv(width, block))
    kernel[grid](big, small, index.contiguous(), r, width, big.shape[1] * tail,
                 -1 if skip is None else skip, TAIL=tail, ROWS=rows, BLOCK=block)


if triton is not None:
    @triton.jit
    def _tile(idx_ptr, r, width, skip, TAIL: tl.constexpr, ROWS: tl.constexpr,
              BLOCK: tl.constexpr):
        """A tile's rows, its elements' offsets in the small tensor's rows and in the big
        tensor's rows, and which elements are in bounds."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        cok = c < width
        col = tl.load(idx_ptr + c // TAIL, mask=cok, other=0)
        cok = cok & (col != skip)
        ok = (rows < r)[:, None] & cok[None, :]
        return rows.to(tl.int64), c, col * TAIL + c % TAIL, ok

    @triton.jit
    def _gather_kernel(src_ptr, out_ptr, idx_ptr, r, width, big_width, skip,
                       TAIL: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        rows, c, bc, ok = _tile(idx_ptr, r, width, skip, TAIL, ROWS, BLOCK)
        v = tl.load(src_ptr + rows[:, None] * big_width + bc[None, :], mask=ok, other=0.0)
        tl.store(out_ptr + rows[:, None] * width + c[None, :], v, mask=ok)

    @triton.jit
    def _scatter_add_kernel(dst_ptr, src_ptr, idx_ptr, r, width, big_width, skip,
                            TAIL: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        rows, c, bc, ok = _tile(idx_ptr, r, width, skip, TAIL, ROWS, BLOCK)
        v = tl.load(src_ptr + rows[:, None] * width + c[None, :], mask=ok, other=0.0)
        tl.atomic_add(dst_ptr + rows[:, None] * big_width + bc[None, :], v.to(tl.float32),
                      mask=ok, sem="relaxed")
