"""Tensor-core Triton kernels for tiny-head self-attention (head dim <= 4): an experiment.

Timed by ``benchmarks/attention_kernels.py`` and, in the supernet step, by
``supernet_throughput.py``'s ``+tcattention`` variant. Not used by ranknas: on an H200 they
do not speed the step up, and in TF32 they miss the float32 tolerance (RESULTS.md).

Same contracts as ``ranknas.evaluator.tiny_attention``'s ``_attention_fwd`` /
``_attention_bwd``, but one program per *example* instead of per (example, head): the whole
packed ``[L, E]`` q, k and v tiles are loaded once and every head runs on tensor cores through
``tl.dot``. A head's 2 (or 3, 4) columns are far below ``tl.dot``'s minimum K of 16, so instead
of padding each head we *mask* the other heads' columns to zero:

* scores of head h: ``(Q * [col in h]) @ K^T`` - the zeroed columns drop out of the sum, so
  the K=16 contraction is exactly head h's D-term dot product;
* output of head h: ``P_h @ (V * [col in h])`` lands in head h's own columns only, so the
  heads' outputs simply add up into one ``[L, E]`` tile (likewise dq, dk, dv in backward).

Tiles are ``[NP, EP]`` with ``NP = max(16, next_pow2(L))`` tokens and
``EP = max(16, next_pow2(E))`` columns; padded rows / columns load as 0, padded keys get a
``-inf`` score. The backward's loop over heads is ``ranknas.supernet.encoder_tiles``'
``heads_backward``, which the fused encoder layer's backward runs as well.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ranknas.supernet.encoder_tiles import heads_backward, token_tiles

__all__ = ["tc_backward", "tc_forward"]

#: ``tl.dot`` input precisions for float32 operands: TF32 (fast, ~1e-3 relative), 3xTF32
#: (split operands, near fp32) and plain fp32 FMA ("ieee").
PRECISIONS = ("tf32", "tf32x3", "ieee")


@triton.jit
def _key_bias(bias_ptr, keys, key_ok, HAS_BIAS: tl.constexpr):
    """``[NP]`` additive score of each key column: the key bias (0 without one), -inf for the
    padded keys ``j >= L``."""
    if HAS_BIAS:  # a constexpr branch, resolved when Triton compiles
        bias = tl.load(bias_ptr + keys, mask=key_ok, other=float("-inf"))
    else:
        bias = tl.where(key_ok, 0.0, float("-inf"))
    return bias


@triton.jit
def _tc_fwd(qkv_ptr, out_ptr, lse_ptr, bias_ptr, scale,
            L: tl.constexpr, H: tl.constexpr, D: tl.constexpr, NP: tl.constexpr,
            EP: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
            UNROLL: tl.constexpr):
    """One example: ``qkv [L, 3E]`` -> ``out [L, E]`` and ``lse [H, L]`` (float32)."""
    E: tl.constexpr = H * D
    b = tl.program_id(0).to(tl.int64)
    rows, cols, row_ok, tile_ok, _ = token_tiles(L, E, NP, EP)
    src = qkv_ptr + b * L * 3 * E + rows[:, None] * 3 * E + cols[None, :]
    # the scale is folded into q once instead of into every [NP, NP] score tile
    q = tl.load(src, mask=tile_ok, other=0.0).to(tl.float32) * scale
    k = tl.load(src + E, mask=tile_ok, other=0.0).to(tl.float32)
    v = tl.load(src + 2 * E, mask=tile_ok, other=0.0).to(tl.float32)
    key_bias = _key_bias(bias_ptr, rows, row_ok, HAS_BIAS)
    kt = tl.trans(k)
    out = tl.zeros((NP, EP), tl.float32)
    # UNROLL = H unrolls the heads (the scheduler may overlap them, at a register cost),
    # UNROLL = 1 keeps a runtime loop (fewer registers, more programs per SM)
    for h in tl.range(H, loop_unroll_factor=UNROLL):
        head = (cols // D) == h  # columns >= E never match: they are padding
        s = tl.dot(tl.where(head[None, :], q, 0.0), kt, input_precision=PRECISION)
        s += key_bias[None, :]
        # padded query rows score 0 against live keys: finite max, no NaN (never stored)
        m = tl.max(s, 1)
        p = tl.exp(s - m[:, None])
        total = tl.sum(p, 1)
        # normalise the [NP, EP] product, not the [NP, NP] probabilities (fewer divisions);
        # p stays float32 so TF32 rounds it only once, inside the dot
        pv = tl.dot(p, tl.where(head[None, :], v, 0.0), input_precision=PRECISION)
        out += pv * (1.0 / total)[:, None]
        tl.store(lse_ptr + (b * H + h) * L + rows, m + tl.log(total), mask=row_ok)
    dst = out_ptr + b * L * E + rows[:, None] * E + cols[None, :]
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _tc_bwd(qkv_ptr, o_ptr, do_ptr, lse_ptr, dqkv_ptr, bias_ptr, scale,
            L: tl.constexpr, H: tl.constexpr, D: tl.constexpr, NP: tl.constexpr,
            EP: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
            UNROLL: tl.constexpr):
    """One example: ``qkv [L, 3E]``, ``out``, ``grad [L, E]``, ``lse [H, L]`` ->
    ``dqkv [L, 3E]``, probabilities recomputed from ``lse``."""
    E: tl.constexpr = H * D
    b = tl.program_id(0).to(tl.int64)
    rows, cols, row_ok, tile_ok, _ = token_tiles(L, E, NP, EP)
    qkv_offs = b * L * 3 * E + rows[:, None] * 3 * E + cols[None, :]
    o_offs = b * L * E + rows[:, None] * E + cols[None, :]
    # scaled q gives the scores and, as dk = dS^T @ (scale q), dk's scale for free
    q = tl.load(qkv_ptr + qkv_offs, mask=tile_ok, other=0.0).to(tl.float32) * scale
    k = tl.load(qkv_ptr + qkv_offs + E, mask=tile_ok, other=0.0).to(tl.float32)
    v = tl.load(qkv_ptr + qkv_offs + 2 * E, mask=tile_ok, other=0.0).to(tl.float32)
    o = tl.load(o_ptr + o_offs, mask=tile_ok, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + o_offs, mask=tile_ok, other=0.0).to(tl.float32)
    key_bias = _key_bias(bias_ptr, rows, row_ok, HAS_BIAS)
    dq, dk, dv = heads_backward(q, k, v, o, do, key_bias, lse_ptr + b * H * L, rows, row_ok,
                                 cols, L, H, D, NP, EP, PRECISION, UNROLL)
    dst = dqkv_ptr + qkv_offs
    ty = dqkv_ptr.dtype.element_ty
    tl.store(dst, (dq * scale).to(ty), mask=tile_ok)
    tl.store(dst + E, dk.to(ty), mask=tile_ok)
    tl.store(dst + 2 * E, dv.to(ty), mask=tile_ok)


def _meta(qkv: torch.Tensor, heads: int, key_bias: torch.Tensor | None, precision: str,
          num_warps: int | None, unroll: int | None) -> tuple[torch.Tensor, dict]:
    """The bias pointer (``qkv`` as a never-read dummy without one) and launch arguments."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if qkv.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"qkv must be float32, bfloat16 or float16, got {qkv.dtype}")
    _, n, e3 = qkv.shape
    e = e3 // 3
    if e3 != 3 * e or e % heads:
        raise ValueError(f"qkv's last dim {e3} is not 3 * heads * head_dim (heads={heads})")
    d = e // heads
    np_ = max(16, triton.next_power_of_2(n))
    if num_warps is None:
        num_warps = 4 if np_ <= 64 else 8
    bias = qkv if key_bias is None else key_bias.to(torch.float32).contiguous()
    return bias, {"scale": 1 / math.sqrt(d), "L": n, "H": heads, "D": d, "NP": np_,
                  "EP": max(16, triton.next_power_of_2(e)), "HAS_BIAS": key_bias is not None,
                  "PRECISION": precision, "UNROLL": heads if unroll is None else unroll,
                  "num_warps": num_warps}


def tc_forward(qkv: torch.Tensor, heads: int, key_bias: torch.Tensor | None = None,
               precision: str = "tf32", num_warps: int | None = None,
               unroll: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax self-attention of packed ``qkv [B, L, 3E]`` (q | k | v, heads contiguous).

    Args:
        qkv: ``[B, L, 3E]`` float32 / bfloat16 / float16, ``E = heads * D``, ``L <= 128``.
        heads: number of heads ``H``.
        key_bias: optional ``[L]`` additive score per key (e.g. 0 / -inf), float32.
        precision: ``tl.dot`` input precision, one of :data:`PRECISIONS`.
        num_warps: warps per program; default 4 up to 64 tokens, 8 above.
        unroll: unroll factor of the loop over heads; default ``heads`` (fully unrolled),
            1 for a runtime loop (about half the registers at 64 tokens).

    Returns:
        ``out [B, L, E]`` in ``qkv``'s dtype and ``lse [B*H, L]`` float32 (log-sum-exp of
        each query's scores, for :func:`tc_backward`).
    """
    qkv = qkv.contiguous()
    b, n, e3 = qkv.shape
    bias, meta = _meta(qkv, heads, key_bias, precision, num_warps, unroll)
    out = qkv.new_empty(b, n, e3 // 3)
    lse = torch.empty(b * heads, n, dtype=torch.float32, device=qkv.device)
    _tc_fwd[(b,)](qkv, out, lse, bias, **meta)
    return out, lse


def tc_backward(qkv: torch.Tensor, out: torch.Tensor, grad: torch.Tensor, lse: torch.Tensor,
                heads: int, key_bias: torch.Tensor | None = None, precision: str = "tf32",
                num_warps: int | None = None, unroll: int | None = None) -> torch.Tensor:
    """``d loss / d qkv`` of :func:`tc_forward`.

    Args:
        qkv: ``[B, L, 3E]`` as given to :func:`tc_forward`.
        out: ``[B, L, E]`` forward output.
        grad: ``[B, L, E]`` ``d loss / d out``.
        lse: ``[B*H, L]`` float32 from :func:`tc_forward`.
        heads, key_bias, precision, num_warps, unroll: as for :func:`tc_forward`.

    Returns:
        ``dqkv [B, L, 3E]`` (dq | dk | dv) in ``qkv``'s dtype.
    """
    qkv = qkv.contiguous()
    bias, meta = _meta(qkv, heads, key_bias, precision, num_warps, unroll)
    dqkv = torch.empty_like(qkv)
    _tc_bwd[(qkv.shape[0],)](qkv, out.contiguous(), grad.contiguous(), lse.contiguous(), dqkv,
                             bias, **meta)
    return dqkv
