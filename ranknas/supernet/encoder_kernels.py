"""Triton kernels for NASRec's tiny post-LN transformer encoder layer: forward and backward.

The math is :func:`ranknas.supernet.fused_encoder.encoder_reference` (forward) and
:func:`~ranknas.supernet.fused_encoder.encoder_reference_backward` (backward, recomputing the
layer's internals from ``z``, the attention output ``att`` and its log-sum-exp ``lse``). Each
direction is one kernel over ``z [B, L, E]`` (E <= 32, head dim <= 4, L <= 64):

- a program holds one example's ``[NP, EP]`` tiles (``NP = max(16, next_pow2(L))`` tokens,
  ``EP = max(16, next_pow2(E))`` features, padding loaded as 0) and loops over the examples
  ``pid, pid + P, ...``; the weights are loaded once per program, as transposed ``[EP, EP]``
  tiles, so every projection is a ``tl.dot`` (tensor cores, K >= 16);
- attention is the tensor-core scheme of ``benchmarks/attention_tensor_core.py``: a head's 2-4
  columns are far below ``tl.dot``'s minimum K, so each head's dot sees the other heads'
  columns masked to zero, and the heads' outputs add up into one ``[NP, EP]`` tile;
- those per-example tile functions are in :mod:`ranknas.supernet.encoder_tiles`;
- the backward adds the 12 weight gradients of the program's examples into one partial row
  per program (in memory: L1 / L2 resident; registers spilled), then
  :func:`~ranknas.supernet.partial_sums.sum_partials` adds the rows up.

Everything is computed in float32; ``out``, ``att`` and ``dz`` come out in ``z``'s dtype and
layout. ``z``, ``att`` and the gradient are read as views of any strides (the segmented step's
``z`` is a transposed projection, its gradient a range of a buffer): no copies first.
"""

from __future__ import annotations

import math

import torch

from ranknas.supernet.encoder_tiles import (
    add_mat,
    add_vec,
    after_attention,
    heads_backward,
    in_proj,
    ln_backward,
    mm,
    tile_offsets,
    token_masks,
    token_tiles,
    vec,
    wt,
    zero_row,
)
from ranknas.supernet.partial_sums import sum_partials

try:  # only for the CUDA kernels; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["PRECISIONS", "encoder_backward", "encoder_forward", "fits"]

#: ``tl.dot`` input precisions: TF32, 3xTF32 (near fp32) and plain fp32 FMA.
PRECISIONS = ("tf32", "tf32x3", "ieee")
MAX_FEATURES = 32
MAX_HEAD_DIM = 4
MAX_TOKENS = 64
#: Default programs per SM: forward programs carry no state between examples, backward ones
#: carry the weight-gradient accumulators (fewer programs, fewer partial rows to sum).
_FWD_PER_SM, _BWD_PER_SM = 8, 4
_UNROLL_MAX_TOKENS = 16  # the head loop is unrolled up to this many tokens (registers)
_CPU_PROGRAMS = 64  # the interpreter has no SMs


def fits(z: torch.Tensor, heads: int) -> bool:
    """Whether the kernels take ``z [B, L, E]`` with ``heads`` heads (CUDA, float32 / bf16,
    E <= 32, head dim <= 4, L <= 64)."""
    if triton is None or not z.is_cuda or z.dim() != 3 or heads <= 0:
        return False
    e = z.shape[-1]
    return (z.dtype in (torch.float32, torch.bfloat16) and e <= MAX_FEATURES
            and e % heads == 0 and e // heads <= MAX_HEAD_DIM and 0 < z.shape[1] <= MAX_TOKENS)


if triton is not None:
    @triton.jit
    def _encoder_fwd(z_ptr, kb_ptr, rm_ptr, in_w, in_b, out_w, out_b, n1_w, n1_b, f1_w, f1_b,
                     f2_w, f2_b, n2_w, n2_b, out_ptr, att_ptr, lse_ptr, SZ0, SZ1, SZ2, SO0,
                     SO1, SO2, B, scale, L: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                     NP: tl.constexpr, EP: tl.constexpr, PRECISION: tl.constexpr,
                     UNROLL: tl.constexpr):
        E: tl.constexpr = H * D
        rows, cols, row_ok, tile_ok, cm = token_tiles(L, E, NP, EP)
        # padded keys score -inf; padded query rows stay finite and are never stored
        kb, rm = token_masks(kb_ptr, rm_ptr, rows, row_ok)
        wq, wk, wv, bq, bk, bv = in_proj(in_w, in_b, scale, E, EP)
        wo, bo = wt(out_w, E, EP), vec(out_b, E, EP)
        w1, c1 = wt(f1_w, E, EP), vec(f1_b, E, EP)
        w2, c2 = wt(f2_w, E, EP), vec(f2_b, E, EP)
        g1, s1 = vec(n1_w, E, EP), vec(n1_b, E, EP)
        g2, s2 = vec(n2_w, E, EP), vec(n2_b, E, EP)
        # a while loop, not range(pid, B, P): the interpreter cannot range over a tensor
        ex = tl.program_id(0).to(tl.int64)
        while ex < B:
            offs = tile_offsets(ex, rows, cols, SO0, SO1, SO2)  # out and att: one layout
            z = tl.load(z_ptr + tile_offsets(ex, rows, cols, SZ0, SZ1, SZ2), mask=tile_ok,
                        other=0.0).to(tl.float32)
            q = mm(z, wq, PRECISION) + bq[None, :]
            k = mm(z, wk, PRECISION) + bk[None, :]
            v = mm(z, wv, PRECISION) + bv[None, :]
            kt = tl.trans(k)
            att = tl.zeros((NP, EP), tl.float32)
            # a runtime head loop (UNROLL = 1) holds one [NP, NP] score tile at a time
            for h in tl.range(H, loop_unroll_factor=UNROLL):
                head = (cols // D) == h  # padded columns match no head
                s = mm(tl.where(head[None, :], q, 0.0), kt, PRECISION) + kb[None, :]
                m = tl.max(s, 1)
                p = tl.exp(s - m[:, None])
                total = tl.sum(p, 1)
                pv = mm(p, tl.where(head[None, :], v, 0.0), PRECISION)
                att += pv * (1.0 / total)[:, None]  # normalise [NP, EP], not [NP, NP]
                tl.store(lse_ptr + (ex * H + h) * L + rows, m + tl.log(total), mask=row_ok)
            tl.store(att_ptr + offs, att.to(att_ptr.dtype.element_ty), mask=tile_ok)
            # project att as stored (rounded to z's dtype), as the backward recomputes it
            att = att.to(att_ptr.dtype.element_ty).to(tl.float32)
            _, _, _, _, _, xhat2, _ = after_attention(z, att, wo, bo, g1, s1, w1, c1, w2, c2,
                                                       cm, E, PRECISION)
            out = (xhat2 * g2[None, :] + s2[None, :]) * rm[:, None]
            tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=tile_ok)
            ex += tl.num_programs(0)

    @triton.jit
    def _encoder_bwd(grad_ptr, z_ptr, att_ptr, lse_ptr, kb_ptr, rm_ptr, in_w, in_b, out_w,
                     out_b, n1_w, n1_b, f1_w, f1_b, f2_w, f2_b, n2_w, dz_ptr, part_ptr, SG0,
                     SG1, SG2, SZ0, SZ1, SZ2, SA0, SA1, SA2, SD0, SD1, SD2, B, scale,
                     L: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                     NP: tl.constexpr, EP: tl.constexpr, PRECISION: tl.constexpr,
                     UNROLL: tl.constexpr):
        E: tl.constexpr = H * D
        EE: tl.constexpr = E * E
        pid = tl.program_id(0)
        rows, cols, row_ok, tile_ok, cm = token_tiles(L, E, NP, EP)
        kb, rm = token_masks(kb_ptr, rm_ptr, rows, row_ok)
        wq, wk, wv, bq, bk, bv = in_proj(in_w, in_b, scale, E, EP)  # q below is the scaled q
        wo, bo = wt(out_w, E, EP), vec(out_b, E, EP)
        w1, c1 = wt(f1_w, E, EP), vec(f1_b, E, EP)
        w2, c2 = wt(f2_w, E, EP), vec(f2_b, E, EP)
        g1, s1 = vec(n1_w, E, EP), vec(n1_b, E, EP)
        g2 = vec(n2_w, E, EP)
        # The weight gradients add up in this program's partial row, example by example. As
        # 16 register accumulators they spilled (255 registers a thread, two programs an SM:
        # H200, ncu); in the row (L1 / L2 resident) the kernel ran ~1.1x faster.
        row = part_ptr + pid.to(tl.int64) * (6 * EE + 10 * E)
        zero_row(row, 6 * EE + 10 * E)
        tl.debug_barrier()  # threads zero other elements than they add to
        # the 12 gradients' offsets in the row, in ENCODER_WEIGHTS order
        P_WQ = row
        P_B = row + 3 * EE  # q, k, v biases
        P_WO = P_B + 3 * E
        P_BO = P_WO + EE  # then the first LayerNorm's weight and bias
        P_W1 = P_BO + 3 * E
        P_W2 = P_W1 + EE + E  # fc1's bias between
        P_C2 = P_W2 + EE  # then the second LayerNorm's weight and bias
        ex = pid.to(tl.int64)
        while ex < B:
            z = tl.load(z_ptr + tile_offsets(ex, rows, cols, SZ0, SZ1, SZ2), mask=tile_ok,
                        other=0.0).to(tl.float32)
            att = tl.load(att_ptr + tile_offsets(ex, rows, cols, SA0, SA1, SA2), mask=tile_ok,
                          other=0.0).to(tl.float32)
            # masked and padded rows get zero gradient, so they add nothing to the sums below
            dy2 = tl.load(grad_ptr + tile_offsets(ex, rows, cols, SG0, SG1, SG2), mask=tile_ok,
                          other=0.0).to(tl.float32) * rm[:, None]
            # recompute the layer from z and att (the attention's inputs only further down)
            xhat1, rstd1, y1, pre, hidden, xhat2, rstd2 = after_attention(
                z, att, wo, bo, g1, s1, w1, c1, w2, c2, cm, E, PRECISION)
            # second LayerNorm, FFN, first LayerNorm, out-projection
            dv2 = ln_backward(xhat2, rstd2, dy2, g2, cm, E)
            add_vec(P_C2 + E, tl.sum(dy2 * xhat2, 0), E, EP)
            add_vec(P_C2 + 2 * E, tl.sum(dy2, 0), E, EP)
            add_mat(P_W2, mm(tl.trans(dv2), hidden, PRECISION), E, EP)
            add_vec(P_C2, tl.sum(dv2, 0), E, EP)
            dpre = tl.where(pre > 0, mm(dv2, tl.trans(w2), PRECISION), 0.0)
            add_mat(P_W1, mm(tl.trans(dpre), y1, PRECISION), E, EP)
            add_vec(P_W1 + EE, tl.sum(dpre, 0), E, EP)
            dy1 = dv2 + mm(dpre, tl.trans(w1), PRECISION)
            du = ln_backward(xhat1, rstd1, dy1, g1, cm, E)
            add_vec(P_BO + E, tl.sum(dy1 * xhat1, 0), E, EP)
            add_vec(P_BO + 2 * E, tl.sum(dy1, 0), E, EP)
            add_mat(P_WO, mm(tl.trans(du), att, PRECISION), E, EP)
            add_vec(P_BO, tl.sum(du, 0), E, EP)
            datt = mm(du, tl.trans(wo), PRECISION)
            # attention backward, probabilities recomputed from lse
            q = mm(z, wq, PRECISION) + bq[None, :]
            k = mm(z, wk, PRECISION) + bk[None, :]
            v = mm(z, wv, PRECISION) + bv[None, :]
            dq, dk, dv = heads_backward(q, k, v, att, datt, kb, lse_ptr + ex * H * L, rows,
                                         row_ok, cols, L, H, D, NP, EP, PRECISION, UNROLL)
            # dq is d/d(scaled q): through the scaled wq it gives dz directly, and the true
            # in-projection gradients are its sums times scale
            add_mat(P_WQ, mm(tl.trans(dq), z, PRECISION) * scale, E, EP)
            add_mat(P_WQ + EE, mm(tl.trans(dk), z, PRECISION), E, EP)
            add_mat(P_WQ + 2 * EE, mm(tl.trans(dv), z, PRECISION), E, EP)
            add_vec(P_B, tl.sum(dq, 0) * scale, E, EP)
            add_vec(P_B + E, tl.sum(dk, 0), E, EP)
            add_vec(P_B + 2 * E, tl.sum(dv, 0), E, EP)
            dz = (du + mm(dq, tl.trans(wq), PRECISION) + mm(dk, tl.trans(wk), PRECISION)
                  + mm(dv, tl.trans(wv), PRECISION))
            tl.store(dz_ptr + tile_offsets(ex, rows, cols, SD0, SD1, SD2),
                     dz.to(dz_ptr.dtype.element_ty), mask=tile_ok)
            tl.debug_barrier()  # the next example's adds read this one's
            ex += tl.num_programs(0)


def _launch(z: torch.Tensor, heads: int, precision: str, programs: int | None,
            per_sm: int, num_warps: int, unroll: int | None) -> tuple[int, dict]:
    """``(programs, launch keywords)`` shared by both kernels."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    b, n, e = z.shape
    d = e // heads
    if unroll is None:  # H200 sweep: unrolled heads 1.13x at 16 tokens, 0.94x at 64
        unroll = heads if n <= _UNROLL_MAX_TOKENS else 1
    if programs is None:
        programs = (per_sm * torch.cuda.get_device_properties(z.device).multi_processor_count
                    if z.is_cuda else _CPU_PROGRAMS)
    programs = max(1, min(b, programs))
    return programs, {"B": b, "scale": 1 / math.sqrt(d), "L": n, "H": heads, "D": d,
                      "NP": max(16, triton.next_power_of_2(n)),
                      "EP": max(16, triton.next_power_of_2(e)), "PRECISION": precision,
                      "UNROLL": unroll, "num_warps": num_warps}


def _masks(key_bias: torch.Tensor, row_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return key_bias.to(torch.float32).contiguous(), row_mask.to(torch.float32).contiguous()


def encoder_forward(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
                    weights: list[torch.Tensor], heads: int, precision: str = "tf32", *,
                    programs: int | None = None, num_warps: int = 4,
                    unroll: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The encoder layer over ``z [B, L, E]``, as ``encoder_reference``.

    Args:
        z: Tokens ``[B, L, E]``, float32 or bfloat16 (see :func:`fits`), any strides (the
            kernels read views in place; ``out`` and ``att`` take ``z``'s layout).
        key_bias: ``[L]`` added to every query's scores (0, or -inf for a padded token).
        row_mask: ``[L]`` 0/1 multiplied into the output rows.
        weights: The 12 parameters in ``ENCODER_WEIGHTS`` order.
        heads: Attention heads.
        precision: ``tl.dot``'s input precision, one of :data:`PRECISIONS`.
        programs: Programs launched (each loops over examples); default 8 per SM.
        num_warps: Warps per program.
        unroll: Unroll factor of the loop over heads (1: a runtime loop, fewest registers);
            default all heads up to 16 tokens, else 1.

    Returns:
        ``(out [B, L, E], att [B, L, E], lse [B*heads, L])``: ``out`` and ``att`` in ``z``'s
        dtype, ``lse`` float32.
    """
    b, n, _ = z.shape
    grid, meta = _launch(z, heads, precision, programs, _FWD_PER_SM, num_warps, unroll)
    out, att = torch.empty_like(z), torch.empty_like(z)  # z's layout, if dense
    lse = torch.empty(b * heads, n, dtype=torch.float32, device=z.device)
    _encoder_fwd[(grid,)](z, *_masks(key_bias, row_mask),
                          *(w.contiguous() for w in weights), out, att, lse, *z.stride(),
                          *out.stride(), **meta)
    return out, att, lse


def encoder_backward(grad: torch.Tensor, z: torch.Tensor, key_bias: torch.Tensor,
                     row_mask: torch.Tensor, weights: list[torch.Tensor], heads: int,
                     att: torch.Tensor, lse: torch.Tensor, precision: str = "tf32", *,
                     programs: int | None = None, num_warps: int = 4,
                     unroll: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`encoder_forward`, as ``encoder_reference_backward``.

    Args:
        grad: ``d loss / d out [B, L, E]``.
        z, key_bias, row_mask, weights, heads: As given to :func:`encoder_forward`.
        att: ``[B, L, E]`` and lse: ``[B*heads, L]`` from :func:`encoder_forward`.
        precision, num_warps, unroll: As for :func:`encoder_forward`.
        programs: Programs launched; each accumulates the weight gradients of its examples
            into one partial row. Default 4 per SM.

    Returns:
        ``(dz [B, L, E], flat)``: ``dz`` in ``z``'s dtype; ``flat`` float32, the 12 weight
        gradients flattened in ``ENCODER_WEIGHTS`` order
        (:func:`~ranknas.supernet.fused_encoder.split_grads` views them as the weights).
    """
    grid, meta = _launch(z, heads, precision, programs, _BWD_PER_SM, num_warps, unroll)
    e = z.shape[-1]
    dz = torch.empty_like(z)
    part = torch.empty(grid, 6 * e * e + 10 * e, dtype=torch.float32, device=z.device)
    # ffn_norm.bias is not needed: LayerNorm's input gradient does not depend on it
    _encoder_bwd[(grid,)](grad, z, att, lse.contiguous(), *_masks(key_bias, row_mask),
                          *(w.contiguous() for w in weights[:11]), dz, part, *grad.stride(),
                          *z.stride(), *att.stride(), *dz.stride(), **meta)
    return dz, sum_partials(part)
