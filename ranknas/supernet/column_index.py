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
  column (the buffers' zero column, whose gradient is never read: padding piles onto it);
- both also in the *field-major* layout ``[R, E, n]`` of the gathered side (``transposed``):
  an op that projects the fields (linear-3d, the transformer) multiplies ``[B*E, n]`` rows,
  and PyTorch would copy a ``[B, n, E]`` input into that layout forward and its gradient back
  backward (~40 us each way for ``[4096, 170, 16]`` on an H200).

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


def _check_transposed(name: str, transposed: bool, big: torch.Tensor) -> None:
    if transposed and big.dim() != 3:
        raise ValueError(f"{name}: transposed takes fields [R, N, E], got shape "
                         f"{tuple(big.shape)}")


def gather_cols(src: torch.Tensor, index: torch.Tensor,
                transposed: bool = False) -> torch.Tensor:
    """``src.index_select(1, index)``, differentiable in ``src``.

    Args:
        src: ``[R, N, *tail]``: fields ``[B, N, E]`` take the kernel, a 2-D ``src``
            PyTorch's ``index_select``.
        index: ``[n]`` integer columns of ``src``, repeats allowed.
        transposed: Return fields field-major, ``[R, E, n]`` contiguous (3-D ``src`` only).

    Returns:
        ``[R, n, *tail]`` (or ``[R, E, n]``); its gradient adds back at ``index`` (repeats
        summed).
    """
    _check("gather_cols", index, src, src)
    _check_transposed("gather_cols", transposed, src)
    if not _fits(src):
        out = src.index_select(1, index)
        return out.transpose(1, 2).contiguous() if transposed else out
    return _GatherCols.apply(src, index, transposed)


def scatter_add_cols_(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor,
                      skip: int | None = None, transposed: bool = False) -> torch.Tensor:
    """``dst.index_add_(1, index, src)``; on CUDA, what ``index`` sends to column ``skip`` is
    dropped.

    Args:
        dst: ``[R, N, *tail]``, contiguous; modified in place.
        index: ``[n]`` integer columns of ``dst``, repeats allowed (summed).
        src: ``[R, n, *tail]``, or with ``transposed`` field-major ``[R, E, n]`` (3-D
            ``dst`` only).
        skip: A column of ``dst`` whose value is never read: the CUDA kernel spares the
            atomics that would pile onto it (the CPU adds it as any other column).
        transposed: ``src`` is field-major.

    Returns:
        ``dst``.
    """
    _check_transposed("scatter_add_cols_", transposed, dst)
    _check("scatter_add_cols_", index, src.transpose(1, 2) if transposed else src, dst)
    if not dst.is_contiguous():
        raise ValueError("scatter_add_cols_: dst must be contiguous (it is written in place)")
    if not (_fits(src) and dst.is_cuda and dst.dtype == torch.float32):
        return dst.index_add_(1, index, (src.transpose(1, 2) if transposed else src)
                              .to(dst.dtype))
    _launch(dst, src.contiguous(), index, skip, scatter=True, transposed=transposed)
    return dst


class _GatherCols(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, src: torch.Tensor, index: torch.Tensor,
                transposed: bool) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.src_shape, ctx.transposed = src.shape, transposed
        n = index.shape[0]
        out = (src.new_empty(src.shape[0], src.shape[2], n) if transposed else
               src.new_empty(src.shape[0], n, *src.shape[2:]))
        _launch(src.contiguous(), out, index, None, scatter=False, transposed=transposed)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (index,) = ctx.saved_tensors
        dsrc = grad.new_zeros(ctx.src_shape, dtype=torch.float32)
        _launch(dsrc, grad.contiguous(), index, None, scatter=True, transposed=ctx.transposed)
        return dsrc.to(grad.dtype), None, None


def _launch(big: torch.Tensor, small: torch.Tensor, index: torch.Tensor, skip: int | None,
            scatter: bool, transposed: bool) -> None:
    """The gather (``small = big[:, index]``) or scatter-add over ``big [R, N, *tail]`` and
    ``small [R, n, *tail]`` (or field-major ``[R, E, n]``), both contiguous: a program per
    tile of rows by (column, tail) elements of ``small``."""
    r, n = small.shape[0], index.shape[0]
    tail = big[0, 0].numel() if big.shape[1] else 1
    if r == 0 or n * tail == 0:
        return
    skip = -1 if skip is None else skip
    if transposed:  # tiles of [rows, columns, E]: both sides' accesses stay coalesced
        tail_p = triton.next_power_of_2(tail)
        cols = min(triton.next_power_of_2(n), max(1, _MAX_BLOCK // tail_p))
        rows = max(1, _TILE // (cols * tail_p))
        kernel = _scatter_add_t_kernel if scatter else _gather_t_kernel
        kernel[(triton.cdiv(r, rows), triton.cdiv(n, cols))](
            big, small, index.contiguous(), r, n, big.shape[1], skip, TAIL=tail, TAIL_P=tail_p,
            ROWS=rows, COLS=cols)
        return
    width = n * tail
    # a tile of several rows: each index is read once per tile, not once per element
    block = min(triton.next_power_of_2(width), _MAX_BLOCK)
    rows = max(1, _TILE // block)
    kernel = _scatter_add_kernel if scatter else _gather_kernel
    kernel[(triton.cdiv(r, rows), triton.cdiv(width, block))](
        big, small, index.contiguous(), r, width, big.shape[1] * tail, skip, TAIL=tail,
        ROWS=rows, BLOCK=block)


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

    @triton.jit
    def _tile_t(idx_ptr, r, n, big_n, skip, TAIL: tl.constexpr, TAIL_P: tl.constexpr,
                ROWS: tl.constexpr, COLS: tl.constexpr):
        """A field-major tile ``[ROWS, COLS, TAIL_P]``: its offsets in the big tensor
        ``[R, N, TAIL]`` and in the small one ``[R, TAIL, n]``, and which are in bounds."""
        rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        j = tl.program_id(1) * COLS + tl.arange(0, COLS)
        t = tl.arange(0, TAIL_P)
        jok = j < n
        col = tl.load(idx_ptr + j, mask=jok, other=0)
        ok = ((rows < r)[:, None, None] & (jok & (col != skip))[None, :, None]
              & (t < TAIL)[None, None, :])
        big = rows[:, None, None] * big_n * TAIL + col[None, :, None] * TAIL + t[None, None, :]
        small = rows[:, None, None] * n * TAIL + t[None, None, :] * n + j[None, :, None]
        return big, small, ok

    @triton.jit
    def _gather_t_kernel(src_ptr, out_ptr, idx_ptr, r, n, big_n, skip, TAIL: tl.constexpr,
                         TAIL_P: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
        big, small, ok = _tile_t(idx_ptr, r, n, big_n, skip, TAIL, TAIL_P, ROWS, COLS)
        tl.store(out_ptr + small, tl.load(src_ptr + big, mask=ok, other=0.0), mask=ok)

    @triton.jit
    def _scatter_add_t_kernel(dst_ptr, src_ptr, idx_ptr, r, n, big_n, skip,
                              TAIL: tl.constexpr, TAIL_P: tl.constexpr, ROWS: tl.constexpr,
                              COLS: tl.constexpr):
        big, small, ok = _tile_t(idx_ptr, r, n, big_n, skip, TAIL, TAIL_P, ROWS, COLS)
        v = tl.load(src_ptr + small, mask=ok, other=0.0)
        tl.atomic_add(dst_ptr + big, v.to(tl.float32), mask=ok, sem="relaxed")
