"""The rows of an embedding table that a step looks up: gather them, sum their gradients per
row, and apply Adagrad to them, each as one Triton kernel.

A fused table (``nasrec_full`` on Criteo, 0.5M rows a field at most: 26 fields, 3.1M rows of
E = 16 floats) is read and updated at ``B * F`` rows a step (~106k at B=4096). PyTorch's
``index_select`` on CUDA (``vectorized_gather_kernel``) gives each index its own block, four
threads for a 64-byte row, and took 50-65 us a call there (H200); a step made four, and
:class:`~ranknas.evaluator.fast_train.IndexAdagrad`'s update was three index ops and four
elementwise passes. Here:

- :func:`gather_rows` is ``table.index_select(0, idx)`` (``F.embedding`` outside autograd):
  a program per block of rows;
- :func:`segment_sums` is ``zeros.index_add_(0, segment, grad.index_select(0, order))``,
  the duplicate rows' gradients summed in one pass (atomics, as ``index_add_``);
- :func:`adagrad_rows_` is IndexAdagrad's update, ``s[r] += g^2; w[r] -= lr * g /
  (sqrt(s[r]) + eps)`` for distinct rows ``r``, in one pass with the same roundings as the
  PyTorch ops (correctly rounded square root and division). Padding entries (a zero gradient
  on any row, possibly one that a real entry also updates) go through atomics, so, as with
  ``index_add_``, they add zeros without losing the real entry's update.

Each runs on CUDA float32 tables whose rows are contiguous, E <= 256, and falls back to the
PyTorch ops elsewhere. Ids are not range-checked on the device (``CTRData`` checks them when
the data is made).
"""

from __future__ import annotations

import torch

try:  # only for the CUDA kernels; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["ENABLED", "adagrad_rows_", "gather_rows", "launch_adagrad_rows", "launch_gather",
           "launch_segment_sums", "segment_sums"]

#: Whether the kernels run where they fit (False: always the PyTorch ops; an A/B switch).
ENABLED = True
_ROWS = 128  # rows per program (E <= 32)
_MAX_E = 256


def _fits(*tensors: torch.Tensor) -> bool:
    if not ENABLED or triton is None:
        return False
    return all(t.is_cuda and t.dtype == torch.float32 and t.dim() == 2 and t.stride(1) == 1
               and t.stride(0) == t.shape[1] and 0 < t.shape[1] <= _MAX_E for t in tensors)


def gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``F.embedding(idx, table)`` outside autograd: the rows ``idx`` of ``table``.

    Args:
        table: ``[R, E]``.
        idx: Integer row ids in ``[0, R)``, any shape (e.g. ``[B, F]``).

    Returns:
        ``[*idx.shape, E]``, a new tensor.
    """
    flat = idx.reshape(-1)
    out = (launch_gather(table, flat) if _fits(table) and idx.is_cuda
           else table.index_select(0, flat))
    return out.view(*idx.shape, table.shape[1])


def segment_sums(grad: torch.Tensor, order: torch.Tensor, segment: torch.Tensor
                 ) -> torch.Tensor:
    """Per segment, the sum of its rows of ``grad``: ``out[segment[j]] += grad[order[j]]``.

    Args:
        grad: ``[N, E]`` row gradients.
        order: ``[N]`` which row of ``grad`` entry ``j`` reads.
        segment: ``[N]`` which output row entry ``j`` adds to, in ``[0, N)``.

    Returns:
        ``[N, E]``; rows that no entry adds to are zero.
    """
    if _fits(grad) and order.is_cuda:
        return launch_segment_sums(grad, order, segment)
    return torch.zeros_like(grad).index_add_(0, segment, grad.index_select(0, order))


@torch.no_grad()
def adagrad_rows_(weight: torch.Tensor, state: torch.Tensor | None, rows: torch.Tensor,
                  grad: torch.Tensor, lr: float, eps: float) -> None:
    """Adagrad (``state`` given) or SGD on rows of ``weight``, in place.

    Args:
        weight: ``[R, E]`` the table.
        state: ``[R, E]`` Adagrad's sums of squared gradients, or None for SGD.
        rows: ``[N]`` distinct rows, except entries whose gradient is zero (padding).
        grad: ``[N, E]`` the gradient of each entry's row.
        lr, eps: Adagrad's learning rate and epsilon.
    """
    if state is None:
        weight.index_add_(0, rows, grad, alpha=-lr)
    elif _fits(weight, state, grad) and rows.is_cuda:
        launch_adagrad_rows(weight, state, rows, grad, lr, eps)
    else:
        state.index_add_(0, rows, grad * grad)
        std = state.index_select(0, rows).sqrt_().add_(eps)
        weight.index_add_(0, rows, grad / std, alpha=-lr)


# -- the launches (any device under TRITON_INTERPRET=1: benchmarks/sparse_rows_check.py) -------
def _config(n: int, e: int) -> tuple[tuple[int], dict]:
    """``(grid, meta-parameters)`` of a kernel over ``n`` rows of ``e`` floats."""
    ep = triton.next_power_of_2(e)
    rows = min(_ROWS, 4096 // ep)  # wide rows: fewer a program, a block of ~4k floats
    return (triton.cdiv(n, rows),), {"E": e, "EP": ep, "ROWS": rows}


def launch_gather(table: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The kernel of :func:`gather_rows` on ``[N]`` ids: ``[N, E]``."""
    n, e = flat.numel(), table.shape[1]
    out = table.new_empty(n, e)
    if n:
        grid, meta = _config(n, e)
        _gather[grid](table, flat.contiguous(), out, n, **meta)
    return out


def launch_segment_sums(grad: torch.Tensor, order: torch.Tensor, segment: torch.Tensor
                        ) -> torch.Tensor:
    """The kernel of :func:`segment_sums`."""
    n, e = grad.shape
    out = torch.zeros_like(grad)
    if n:
        grid, meta = _config(n, e)
        _segment_sums[grid](grad, order.contiguous(), segment.contiguous(), out, n, **meta)
    return out


def launch_adagrad_rows(weight: torch.Tensor, state: torch.Tensor, rows: torch.Tensor,
                        grad: torch.Tensor, lr: float, eps: float) -> None:
    """The kernel of :func:`adagrad_rows_` (Adagrad)."""
    n, e = grad.shape
    if n:
        grid, meta = _config(n, e)
        # no fused multiply-adds: the PyTorch ops round g * g before adding it
        _adagrad_rows[grid](weight, state, rows.contiguous(), grad, n, -lr, eps,
                            enable_fp_fusion=False, **meta)


if triton is not None:
    @triton.jit
    def _block(n, E: tl.constexpr, EP: tl.constexpr, ROWS: tl.constexpr):
        """``(entries [ROWS], their mask, columns [EP], the [ROWS, EP] mask)``."""
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        c = tl.arange(0, EP)
        ok = r < n
        return r.to(tl.int64), ok, c, ok[:, None] & (c < E)[None, :]

    @triton.jit
    def _gather(table_ptr, idx_ptr, out_ptr, n, E: tl.constexpr, EP: tl.constexpr,
                ROWS: tl.constexpr):
        r, ok, c, m = _block(n, E, EP, ROWS)
        ids = tl.load(idx_ptr + r, mask=ok, other=0).to(tl.int64)
        x = tl.load(table_ptr + ids[:, None] * E + c[None, :], mask=m)
        tl.store(out_ptr + r[:, None] * E + c[None, :], x, mask=m)

    @triton.jit
    def _segment_sums(grad_ptr, order_ptr, seg_ptr, out_ptr, n, E: tl.constexpr,
                      EP: tl.constexpr, ROWS: tl.constexpr):
        r, ok, c, m = _block(n, E, EP, ROWS)
        src = tl.load(order_ptr + r, mask=ok, other=0).to(tl.int64)
        dst = tl.load(seg_ptr + r, mask=ok, other=0).to(tl.int64)
        g = tl.load(grad_ptr + src[:, None] * E + c[None, :], mask=m)
        tl.atomic_add(out_ptr + dst[:, None] * E + c[None, :], g, mask=m, sem="relaxed")

    @triton.jit
    def _adagrad_rows(w_ptr, s_ptr, rows_ptr, grad_ptr, n, neg_lr, eps, E: tl.constexpr,
                      EP: tl.constexpr, ROWS: tl.constexpr):
        r, ok, c, m = _block(n, E, EP, ROWS)
        rows = tl.load(rows_ptr + r, mask=ok, other=0).to(tl.int64)
        at = rows[:, None] * E + c[None, :]
        g = tl.load(grad_ptr + r[:, None] * E + c[None, :], mask=m)
        # the sum this entry's add makes (a padding entry adds 0 to any row, atomically)
        sq = g * g
        s = tl.atomic_add(s_ptr + at, sq, mask=m, sem="relaxed") + sq
        std = tl.sqrt_rn(s) + eps
        tl.atomic_add(w_ptr + at, tl.div_rn(g, std) * neg_lr, mask=m, sem="relaxed")
