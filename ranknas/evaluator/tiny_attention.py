"""Fused self-attention for tiny heads: ``nn.MultiheadAttention`` with head dim <= 4.

NASRec's transformer runs 8 heads of dimension 2 over the field axis. PyTorch's SDPA has no
fused kernel for such heads in fp32 (the math path writes the ``[B, heads, L, L]`` scores and
probabilities several times) and pads them to 32 in bf16. :func:`tiny_head_attention` is a
custom op: a PyTorch reference on CPU, one Triton kernel per (example, head) on CUDA, forward
and backward. ``TrainConfig(fused_attention=True)`` patches it in for the length of training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:  # only for the CUDA kernel; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["fused_self_attention", "tiny_head_attention"]


# -- fused self-attention for tiny heads ----------------------------------------------------
#: Calls the fused kernel takes (others fall back to nn.MultiheadAttention): tokens, head dim.
FUSED_MAX_TOKENS, FUSED_MAX_HEAD_DIM = 128, 4


def _split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """Packed ``[B, L, 3E]`` (q | k | v, heads contiguous in each) -> three ``[B, h, L, d]``,
    in float32 at least (float64 stays)."""
    b, n, e3 = qkv.shape
    qkv = qkv.to(torch.promote_types(qkv.dtype, torch.float32))
    return qkv.view(b, n, 3, heads, e3 // 3 // heads).permute(2, 0, 3, 1, 4).unbind(0)


@torch.library.custom_op("ranknas::tiny_head_attention", mutates_args=())
def tiny_head_attention(qkv: torch.Tensor, heads: int, key_bias: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax self-attention of packed ``qkv [B, L, 3E]``: ``(out [B, L, E], lse [B*h, L])``.

    Same math as ``nn.MultiheadAttention`` between its in- and out-projections (scale
    ``1/sqrt(d)``, no dropout); ``key_bias [L]`` (float32, e.g. 0 or -inf to mask padded
    keys) is added to every query's scores, as SDPA's additive ``attn_mask``. On CUDA a
    Triton kernel that never writes the ``[L, L]`` scores runs (head dim <= 4); elsewhere (and
    for float64) this PyTorch reference.
    """
    return _attention_reference(qkv, heads, key_bias)


def _scores(q: torch.Tensor, k: torch.Tensor, key_bias: torch.Tensor | None) -> torch.Tensor:
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return s if key_bias is None else s + key_bias.to(s.dtype)


def _attention_reference(qkv: torch.Tensor, heads: int, key_bias: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _split_qkv(qkv, heads)
    s = _scores(q, k, key_bias)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.exp(s - lse[..., None]) @ v
    b, n = qkv.shape[:2]
    return (out.transpose(1, 2).reshape(b, n, -1).to(qkv.dtype),
            lse.reshape(b * heads, n).contiguous())


@torch.library.custom_op("ranknas::tiny_head_attention_backward", mutates_args=())
def tiny_head_attention_backward(qkv: torch.Tensor, out: torch.Tensor, grad: torch.Tensor,
                                 lse: torch.Tensor, heads: int,
                                 key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``d loss / d qkv`` of :func:`tiny_head_attention`, from ``grad = d loss / d out``."""
    return _attention_reference_backward(qkv, out, grad, lse, heads, key_bias)


def _attention_reference_backward(qkv: torch.Tensor, out: torch.Tensor, grad: torch.Tensor,
                                  lse: torch.Tensor, heads: int,
                                  key_bias: torch.Tensor | None = None) -> torch.Tensor:
    q, k, v = _split_qkv(qkv, heads)
    b, n = qkv.shape[:2]
    scale = 1 / math.sqrt(q.shape[-1])
    p = torch.exp(_scores(q, k, key_bias) - lse.view(b, heads, n, 1).to(q.dtype))
    do = grad.to(q.dtype).view(b, n, heads, -1).transpose(1, 2)
    o = out.to(q.dtype).view(b, n, heads, -1).transpose(1, 2)
    dv = p.transpose(-1, -2) @ do
    ds = p * (do @ v.transpose(-1, -2) - (do * o).sum(-1, keepdim=True)) * scale
    dq, dk = ds @ k, ds.transpose(-1, -2) @ q
    return torch.stack([dq, dk, dv], 2).permute(0, 3, 2, 1, 4).reshape(qkv.shape).to(qkv.dtype)


@tiny_head_attention.register_fake
def _(qkv: torch.Tensor, heads: int, key_bias: torch.Tensor | None = None
      ) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, e3 = qkv.shape
    return qkv.new_empty(b, n, e3 // 3), qkv.new_empty(b * heads, n, dtype=_lse_dtype(qkv))


def _lse_dtype(qkv: torch.Tensor) -> torch.dtype:
    return torch.promote_types(qkv.dtype, torch.float32)


@tiny_head_attention_backward.register_fake
def _(qkv: torch.Tensor, out: torch.Tensor, grad: torch.Tensor, lse: torch.Tensor,
      heads: int, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.empty_like(qkv)


def _attention_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    ctx.save_for_backward(inputs[0], output[0], output[1], inputs[2])
    ctx.heads = inputs[1]
    ctx.set_materialize_grads(False)  # lse's gradient: None, not a filled zero tensor


def _attention_grad(ctx: Any, grad_out: torch.Tensor | None, grad_lse: Any) -> tuple:
    if grad_out is None:
        return None, None, None
    qkv, out, lse, key_bias = ctx.saved_tensors
    # the key bias is a constant (a mask): no gradient
    return tiny_head_attention_backward(qkv, out, grad_out.contiguous(), lse, ctx.heads,
                                        key_bias), None, None


tiny_head_attention.register_autograd(_attention_grad, setup_context=_attention_setup)


# The Triton kernels of tiny_head_attention. One program per (example, head), one thread per
# token: the thread of query i loops over the keys (unrolled: N is a compile-time constant)
# with broadcast loads of each key and value, so the [N, N] scores live one row per thread and
# nothing needs a cross-thread reduction. Backward: the thread of token t computes dq_t looping
# over keys, then dk_t and dv_t looping over queries (scores recomputed from lse). Head dims up
# to 4; components past D are compiled out.
if triton is not None:
    @triton.jit
    def _load4(ptr, D: tl.constexpr):
        x0 = tl.load(ptr).to(tl.float32)
        x1, x2, x3 = x0, x0, x0  # placeholders, never read when D is smaller
        if D > 1:
            x1 = tl.load(ptr + 1).to(tl.float32)
        if D > 2:
            x2 = tl.load(ptr + 2).to(tl.float32)
        if D > 3:
            x3 = tl.load(ptr + 3).to(tl.float32)
        return x0, x1, x2, x3

    @triton.jit
    def _dot4(a0, a1, a2, a3, b0, b1, b2, b3, D: tl.constexpr):
        r = a0 * b0
        if D > 1:
            r += a1 * b1
        if D > 2:
            r += a2 * b2
        if D > 3:
            r += a3 * b3
        return r

    @triton.jit
    def _store4(ptr, x0, x1, x2, x3, mask, D: tl.constexpr):  # store casts to ptr's type
        tl.store(ptr, x0, mask=mask)
        if D > 1:
            tl.store(ptr + 1, x1, mask=mask)
        if D > 2:
            tl.store(ptr + 2, x2, mask=mask)
        if D > 3:
            tl.store(ptr + 3, x3, mask=mask)

    @triton.jit
    def _bias(bias_ptr, j, HAS_BIAS: tl.constexpr):
        """The key bias of key(s) ``j`` (0 without one); one return, as Triton wants one type."""
        if HAS_BIAS:  # noqa: SIM108 - a constexpr branch, resolved when Triton compiles
            b = tl.load(bias_ptr + j)
        else:
            b = j * 0.0
        return b

    @triton.jit
    def _attention_fwd(qkv_ptr, o_ptr, lse_ptr, bias_ptr, scale, N: tl.constexpr,
            H: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, HAS_BIAS: tl.constexpr):
        pid = tl.program_id(0)
        e = H * D
        t = tl.arange(0, ROWS)
        ok = t < N
        t = tl.where(ok, t, 0)  # padding threads redo row 0 and store nothing
        base = qkv_ptr + (pid // H) * N * 3 * e + (pid % H) * D
        q0, q1, q2, q3 = _load4(base + t * 3 * e, D)
        q0, q1, q2, q3 = q0 * scale, q1 * scale, q2 * scale, q3 * scale
        m = tl.full((ROWS,), float("-inf"), tl.float32)
        for j in tl.static_range(N):
            k0, k1, k2, k3 = _load4(base + j * 3 * e + e, D)
            m = tl.maximum(m, _dot4(q0, q1, q2, q3, k0, k1, k2, k3, D)
                           + _bias(bias_ptr, j, HAS_BIAS))
        total = tl.zeros((ROWS,), tl.float32)
        a0, a1, a2, a3 = total, total, total, total
        for j in tl.static_range(N):
            k0, k1, k2, k3 = _load4(base + j * 3 * e + e, D)
            v0, v1, v2, v3 = _load4(base + j * 3 * e + 2 * e, D)
            p = tl.exp(_dot4(q0, q1, q2, q3, k0, k1, k2, k3, D) + _bias(bias_ptr, j, HAS_BIAS)
                       - m)
            total += p
            a0, a1, a2, a3 = a0 + p * v0, a1 + p * v1, a2 + p * v2, a3 + p * v3
        inv = 1.0 / total
        out = o_ptr + (pid // H) * N * e + (pid % H) * D + t * e
        _store4(out, a0 * inv, a1 * inv, a2 * inv, a3 * inv, ok, D)
        tl.store(lse_ptr + pid * N + t, m + tl.log(total), mask=ok)

    @triton.jit
    def _attention_bwd(qkv_ptr, o_ptr, do_ptr, lse_ptr, dqkv_ptr, bias_ptr, scale,
            N: tl.constexpr, H: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr,
            HAS_BIAS: tl.constexpr):
        pid = tl.program_id(0)
        e = H * D
        t = tl.arange(0, ROWS)
        ok = t < N
        t = tl.where(ok, t, 0)
        base = qkv_ptr + (pid // H) * N * 3 * e + (pid % H) * D
        obase = (pid // H) * N * e + (pid % H) * D
        lbase = lse_ptr + pid * N
        # token t as a query: dq_t = scale * sum_j ds_tj k_j
        q0, q1, q2, q3 = _load4(base + t * 3 * e, D)
        q0, q1, q2, q3 = q0 * scale, q1 * scale, q2 * scale, q3 * scale
        g0, g1, g2, g3 = _load4(do_ptr + obase + t * e, D)
        o0, o1, o2, o3 = _load4(o_ptr + obase + t * e, D)
        delta = _dot4(g0, g1, g2, g3, o0, o1, o2, o3, D)
        lse = tl.load(lbase + t)
        dq0 = tl.zeros((ROWS,), tl.float32)
        dq1, dq2, dq3 = dq0, dq0, dq0
        for j in tl.static_range(N):
            k0, k1, k2, k3 = _load4(base + j * 3 * e + e, D)
            v0, v1, v2, v3 = _load4(base + j * 3 * e + 2 * e, D)
            p = tl.exp(_dot4(q0, q1, q2, q3, k0, k1, k2, k3, D) + _bias(bias_ptr, j, HAS_BIAS)
                       - lse)
            ds = p * (_dot4(g0, g1, g2, g3, v0, v1, v2, v3, D) - delta)
            dq0, dq1, dq2, dq3 = dq0 + ds * k0, dq1 + ds * k1, dq2 + ds * k2, dq3 + ds * k3
        dbase = dqkv_ptr + (pid // H) * N * 3 * e + (pid % H) * D + t * 3 * e
        _store4(dbase, dq0 * scale, dq1 * scale, dq2 * scale, dq3 * scale, ok, D)
        # token t as a key: dv_t = sum_i p_it do_i, dk_t = scale * sum_i ds_it q_i
        k0, k1, k2, k3 = _load4(base + t * 3 * e + e, D)
        v0, v1, v2, v3 = _load4(base + t * 3 * e + 2 * e, D)
        dk0, dk1, dk2, dk3 = dq0 * 0.0, dq0 * 0.0, dq0 * 0.0, dq0 * 0.0
        dv0, dv1, dv2, dv3 = dk0, dk0, dk0, dk0
        key_bias = _bias(bias_ptr, t, HAS_BIAS)  # a masked key (-inf) gets p = 0: no grads
        for i in tl.static_range(N):
            q0, q1, q2, q3 = _load4(base + i * 3 * e, D)
            g0, g1, g2, g3 = _load4(do_ptr + obase + i * e, D)
            o0, o1, o2, o3 = _load4(o_ptr + obase + i * e, D)
            p = tl.exp(_dot4(q0, q1, q2, q3, k0, k1, k2, k3, D) * scale + key_bias
                       - tl.load(lbase + i))
            ds = p * (_dot4(g0, g1, g2, g3, v0, v1, v2, v3, D)
                      - _dot4(g0, g1, g2, g3, o0, o1, o2, o3, D))
            dv0, dv1, dv2, dv3 = dv0 + p * g0, dv1 + p * g1, dv2 + p * g2, dv3 + p * g3
            dk0, dk1, dk2, dk3 = dk0 + ds * q0, dk1 + ds * q1, dk2 + ds * q2, dk3 + ds * q3
        _store4(dbase + e, dk0 * scale, dk1 * scale, dk2 * scale, dk3 * scale, ok, D)
        _store4(dbase + 2 * e, dv0, dv1, dv2, dv3, ok, D)


def _kernel_fits(qkv: torch.Tensor, heads: int) -> bool:
    return (triton is not None and qkv.dtype != torch.float64
            and qkv.shape[1] <= FUSED_MAX_TOKENS
            and qkv.shape[2] // 3 // heads <= FUSED_MAX_HEAD_DIM)


def _launch(qkv: torch.Tensor, heads: int, key_bias: torch.Tensor | None
            ) -> tuple[tuple, torch.Tensor, dict]:
    b, n, e3 = qkv.shape
    d = e3 // 3 // heads
    rows = max(32, triton.next_power_of_2(n))
    meta = {"N": n, "H": heads, "D": d, "ROWS": rows, "num_warps": rows // 32,
            "HAS_BIAS": key_bias is not None}
    bias = qkv if key_bias is None else key_bias.float().contiguous()  # qkv: a dummy pointer
    return (b * heads,), bias, {"scale": 1 / math.sqrt(d), **meta}


@tiny_head_attention.register_kernel("cuda")
def _(qkv: torch.Tensor, heads: int, key_bias: torch.Tensor | None = None
      ) -> tuple[torch.Tensor, torch.Tensor]:
    if not _kernel_fits(qkv, heads):
        return _attention_reference(qkv, heads, key_bias)
    qkv = qkv.contiguous()
    b, n, e3 = qkv.shape
    out = qkv.new_empty(b, n, e3 // 3)
    lse = qkv.new_empty(b * heads, n, dtype=torch.float32)
    grid, bias, meta = _launch(qkv, heads, key_bias)
    _attention_fwd[grid](qkv, out, lse, bias, **meta)
    return out, lse


@tiny_head_attention_backward.register_kernel("cuda")
def _(qkv: torch.Tensor, out: torch.Tensor, grad: torch.Tensor, lse: torch.Tensor,
      heads: int, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    if not _kernel_fits(qkv, heads):
        return _attention_reference_backward(qkv, out, grad, lse, heads, key_bias)
    qkv = qkv.contiguous()
    dqkv = torch.empty_like(qkv)
    grid, bias, meta = _launch(qkv, heads, key_bias)
    _attention_bwd[grid](qkv, out.contiguous(), grad.contiguous(), lse, dqkv, bias, **meta)
    return dqkv


def fused_self_attention(module: nn.MultiheadAttention) -> Any:
    """A ``forward`` for ``module`` that runs :func:`tiny_head_attention` on the calls it can
    take (self-attention, batch first, no mask, no weights, no dropout, small heads) and the
    module's own forward on the others."""
    original = module.forward

    def forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        plain = (query is not key or key is not value or query.dim() != 3 or need_weights
                 or key_padding_mask is not None or attn_mask is not None or is_causal
                 or not module.batch_first or not module._qkv_same_embed_dim
                 or module.in_proj_bias is None or module.bias_k is not None
                 or (module.dropout > 0 and module.training)
                 or query.shape[1] > FUSED_MAX_TOKENS or module.head_dim > FUSED_MAX_HEAD_DIM)
        if plain:
            return original(query, key, value, key_padding_mask=key_padding_mask,
                            need_weights=need_weights, attn_mask=attn_mask,
                            average_attn_weights=average_attn_weights, is_causal=is_causal)
        qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias)
        out, _ = tiny_head_attention(qkv, module.num_heads)
        return F.linear(out, module.out_proj.weight, module.out_proj.bias), None

    return forward
