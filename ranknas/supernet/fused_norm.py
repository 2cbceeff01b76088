"""LayerNorm over the masked features of the last dim, forward and backward in one kernel each.

The fixed-shape executions normalise a ``[..., W_max]`` tensor over its first ``n`` features
(a 0/1 ``mask [W_max]``, ``inv = 1/n``; :func:`ranknas.supernet.masked_base.masked_norm`).
Written as PyTorch ops that is about ten elementwise kernels forward and twenty backward, each
reading and writing the whole ``[B, W_max]`` tensor: the largest share of a segmented step's
GPU time. NASRec's tiny LayerNorms (over E = 16 features of ``[B, L, E]``) are slow in
PyTorch's own kernels too (one row per warp, and a separate weight-gradient pass). Here:

- :func:`masked_layer_norm` is a custom op: a PyTorch reference on CPU (and for float64), one
  Triton kernel on CUDA that normalises a tile of rows per program and keeps the row
  statistics ``mean, rstd [R]`` for backward;
- the backward kernel computes the input gradient of its tiles and accumulates the weight and
  bias gradients in registers, one partial row per program, summed afterwards.

``mask=None`` is a plain LayerNorm (every feature active). Biased variance and eps 1e-5, as
``F.layer_norm``.
"""

from __future__ import annotations

from typing import Any

import torch

from ranknas.supernet.partial_sums import sum_partials

try:  # only for the CUDA kernels; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["fused_norm_fits", "masked_layer_norm"]

EPS = 1e-5
#: Widest last dim the kernels take (one tile row holds it); wider falls back to PyTorch.
MAX_FEATURES = 8192
_TILE = 4096  # elements a program holds per tile
_PROGRAMS = 512  # backward programs at most (one partial weight-gradient row each)


def fused_norm_fits(x: torch.Tensor) -> bool:
    """Whether :func:`masked_layer_norm` runs its Triton kernel for ``x``."""
    return (triton is not None and x.is_cuda and x.dtype != torch.float64
            and x.shape[-1] <= MAX_FEATURES and x.numel() > 0)


def masked_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      mask: torch.Tensor | None = None, inv: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """LayerNorm of ``x [..., N]`` over the features where ``mask [N]`` is 1, zero elsewhere.

    Args:
        x: Input ``[..., N]``.
        weight: Scale ``[N]``.
        bias: Shift ``[N]``.
        mask: 0/1 floats ``[N]`` (the active features); None: all active.
        inv: ``[1]``, one over the number of active features (with ``mask``).

    Returns:
        ``[..., N]``: ``((x - mean) * rstd * weight + bias) * mask``, the statistics over the
        active features only.

    Raises:
        ValueError: ``mask`` without ``inv`` or the reverse.
    """
    if (mask is None) != (inv is None):
        raise ValueError("masked_layer_norm: pass mask and inv (1 / active features) "
                         "together, or neither for a plain LayerNorm")
    return _norm(x, weight, bias, mask, inv)[0]


def _masks(x: torch.Tensor, mask: torch.Tensor | None, inv: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    if mask is None:
        n = x.shape[-1]
        return x.new_ones(n), x.new_full((1,), 1.0 / n)
    return mask.to(x.dtype), inv.to(x.dtype)


@torch.library.custom_op("ranknas::masked_layer_norm", mutates_args=())
def _norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
          mask: torch.Tensor | None, inv: torch.Tensor | None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out [..., N], mean [R], rstd [R])`` with ``R`` the rows of ``x``."""
    return _norm_reference(x, weight, bias, mask, inv)


def _norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    mask: torch.Tensor | None, inv: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m, k = _masks(x, mask, inv)
    mean = (x * m).sum(-1, keepdim=True) * k
    d = (x - mean) * m
    rstd = torch.rsqrt((d * d).sum(-1, keepdim=True) * k + EPS)
    out = (d * rstd * weight + bias) * m
    stat = _stat_dtype(x)
    return out, mean.reshape(-1).to(stat), rstd.reshape(-1).to(stat)


@_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None,
      inv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = x.numel() // x.shape[-1]
    return (torch.empty_like(x), x.new_empty(rows, dtype=_stat_dtype(x)),
            x.new_empty(rows, dtype=_stat_dtype(x)))


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


@torch.library.custom_op("ranknas::masked_layer_norm_backward", mutates_args=())
def _norm_backward(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor,
                   mask: torch.Tensor | None, inv: torch.Tensor | None, mean: torch.Tensor,
                   rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, [dweight; dbias] [2, N])`` of :func:`masked_layer_norm` from ``grad = d loss /
    d out``: the weight gradients stacked in one tensor (a custom op's outputs may not alias,
    and two would cost a reduction each)."""
    dx, dw, db = _backward_reference(x, grad, weight, mask, inv, mean, rstd)
    return dx, torch.stack([dw, db])


def _backward_reference(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor,
                        mask: torch.Tensor | None, inv: torch.Tensor | None,
                        mean: torch.Tensor, rstd: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m, k = _masks(x, mask, inv)
    shape = (*x.shape[:-1], 1)
    xhat = (x - mean.view(shape).to(x.dtype)) * m * rstd.view(shape).to(x.dtype)
    g = grad * m
    dxhat = g * weight
    c1 = (dxhat * xhat).sum(-1, keepdim=True) * k
    c2 = dxhat.sum(-1, keepdim=True) * k
    dx = (dxhat - c2 - xhat * c1) * rstd.view(shape).to(x.dtype) * m
    rows = g.reshape(-1, x.shape[-1])
    return (dx, (rows * xhat.reshape(rows.shape)).sum(0).to(weight.dtype),
            rows.sum(0).to(weight.dtype))


@_norm_backward.register_fake
def _(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None,
      inv: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor
      ) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), weight.new_empty(2, *weight.shape)


def _setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, _, mask, inv = inputs
    ctx.save_for_backward(x, weight, mask, inv, output[1], output[2])
    # the statistics' gradients stay None, not zeros: two fill kernels fewer per backward
    ctx.set_materialize_grads(False)


def _grad(ctx: Any, grad_out: torch.Tensor | None, _mean: Any, _rstd: Any) -> tuple:
    if grad_out is None:
        return None, None, None, None, None
    x, weight, mask, inv, mean, rstd = ctx.saved_tensors
    dx, dwb = _norm_backward(x, grad_out.contiguous(), weight, mask, inv, mean, rstd)
    return dx, dwb[0], dwb[1], None, None  # the mask and 1/n are path constants


_norm.register_autograd(_grad, setup_context=_setup)


# The Triton kernels. A tile is [ROWS, BLOCK] elements (BLOCK = N rounded up to a power of 2,
# ROWS * BLOCK = _TILE), so a tiny N (16) still fills a program; each row's statistics are
# reductions along the tile's second axis.
if triton is not None:
    @triton.jit
    def _feature_mask(m_ptr, inv_ptr, cols, cok, N: tl.constexpr, HAS_MASK: tl.constexpr):
        if HAS_MASK:
            m = tl.load(m_ptr + cols, mask=cok, other=0.0).to(tl.float32)
            k = tl.load(inv_ptr).to(tl.float32)
        else:
            m = cok.to(tl.float32)
            k = 1.0 / N
        return m, k

    @triton.jit
    def _norm_fwd(x_ptr, w_ptr, b_ptr, m_ptr, inv_ptr, y_ptr, mean_ptr, rstd_ptr, R,
                  N: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                  HAS_MASK: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        rok, cok = rows < R, cols < N
        ok = rok[:, None] & cok[None, :]
        offs = rows[:, None] * N + cols[None, :]
        m, k = _feature_mask(m_ptr, inv_ptr, cols, cok, N, HAS_MASK)
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        mean = tl.sum(x * m[None, :], axis=1) * k
        d = (x - mean[:, None]) * m[None, :]
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) * k + 1e-5)
        w = tl.load(w_ptr + cols, mask=cok, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=cok, other=0.0).to(tl.float32)
        y = (d * rstd[:, None] * w[None, :] + b[None, :]) * m[None, :]
        tl.store(y_ptr + offs, y, mask=ok)  # the store casts to y's dtype
        tl.store(mean_ptr + rows, mean, mask=rok)
        tl.store(rstd_ptr + rows, rstd, mask=rok)

    @triton.jit
    def _norm_bwd(x_ptr, dy_ptr, w_ptr, m_ptr, inv_ptr, mean_ptr, rstd_ptr, dx_ptr, part_ptr,
                  R, TILES, N: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        cok = cols < N
        m, k = _feature_mask(m_ptr, inv_ptr, cols, cok, N, HAS_MASK)
        w = tl.load(w_ptr + cols, mask=cok, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        db = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(TILES):
            rows = (pid * TILES + t) * ROWS + tl.arange(0, ROWS)
            rok = rows < R
            ok = rok[:, None] & cok[None, :]
            offs = rows[:, None] * N + cols[None, :]
            x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            g = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32) * m[None, :]
            mean = tl.load(mean_ptr + rows, mask=rok, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=rok, other=0.0)
            xhat = (x - mean[:, None]) * m[None, :] * rstd[:, None]
            dw += tl.sum(g * xhat, axis=0)
            db += tl.sum(g, axis=0)
            dxhat = g * w[None, :]
            c1 = tl.sum(dxhat * xhat, axis=1) * k
            c2 = tl.sum(dxhat, axis=1) * k
            dx = (dxhat - c2[:, None] - xhat * c1[:, None]) * rstd[:, None] * m[None, :]
            tl.store(dx_ptr + offs, dx, mask=ok)
        tl.store(part_ptr + pid * 2 * N + cols, dw, mask=cok)
        tl.store(part_ptr + pid * 2 * N + N + cols, db, mask=cok)


def _launch(x: torch.Tensor, mask: torch.Tensor | None, inv: torch.Tensor | None
            ) -> tuple[int, int, dict[str, Any], torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    block = triton.next_power_of_2(n)
    rows = max(1, _TILE // block)
    meta = {"N": n, "ROWS": rows, "BLOCK": block, "HAS_MASK": mask is not None,
            "num_warps": 8 if rows * block >= 4096 else 4}
    m = x if mask is None else mask.contiguous()  # x: a dummy pointer
    k = x if inv is None else inv.float().contiguous()
    return x.numel() // n, triton.cdiv(x.numel() // n, rows), meta, m, k


@_norm.register_kernel("cuda")
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None,
      inv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not fused_norm_fits(x):
        return _norm_reference(x, weight, bias, mask, inv)
    x = x.contiguous()
    r, tiles, meta, m, k = _launch(x, mask, inv)
    out = torch.empty_like(x)
    mean = x.new_empty(r, dtype=torch.float32)
    rstd = x.new_empty(r, dtype=torch.float32)
    _norm_fwd[(tiles,)](x, weight.contiguous(), bias.contiguous(), m, k, out, mean, rstd, r,
                        **meta)
    return out, mean, rstd


@_norm_backward.register_kernel("cuda")
def _(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None,
      inv: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor
      ) -> tuple[torch.Tensor, torch.Tensor]:
    if not fused_norm_fits(x):
        dx, dw, db = _backward_reference(x, grad, weight, mask, inv, mean, rstd)
        return dx, torch.stack([dw, db])
    x, grad = x.contiguous(), grad.contiguous()
    r, tiles, meta, m, k = _launch(x, mask, inv)
    per = triton.cdiv(tiles, _PROGRAMS)
    programs = triton.cdiv(tiles, per)
    dx = torch.empty_like(x)
    part = x.new_empty(programs, 2 * meta["N"], dtype=torch.float32)  # [dweight, dbias] rows
    _norm_bwd[(programs,)](x, grad, weight.contiguous(), m, k, mean, rstd, dx, part, r, per,
                           **meta)
    return dx, sum_partials(part).view(2, -1).to(weight.dtype)
