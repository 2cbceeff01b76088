"""NASRec's transformer encoder layer over tiny embeddings as one op: forward and backward.

The masked transformer (:class:`~ranknas.supernet.masked_ops.MaskedTransformer`) runs a post-LN
encoder layer over ``[B, L, E]`` tokens with NASRec's E = 16: an in-projection to q, k, v,
8 heads of dimension 2, the out-projection, a LayerNorm, a 16-wide ReLU FFN and a second
LayerNorm. As PyTorch ops that is ~15 kernels forward and ~30 backward over ``[B*L, 16]``
rows, each a skinny GEMM or an elementwise pass that moves the whole tensor. The transformer
segments were the largest share of a segmented step's GPU time (3.45 of 9.75 ms at B=4096),
the attention kernels at most a third of theirs (at 64 tokens). :func:`tiny_encoder_layer`
is one custom op for the whole layer:

- its math is :func:`encoder_reference` (forward) and :func:`encoder_reference_backward`
  (the gradients written out, as a kernel computes them: the layer's internals are
  recomputed from its input, the attention output and the attention's log-sum-exp);
- both run as PyTorch ops on the CPU (and for float64); on CUDA, one Triton kernel each way
  (:mod:`ranknas.supernet.encoder_kernels`), TF32 dots where the matmuls run TF32.

The masked transformer takes this op on CUDA where the matmuls run TF32 (the supernet
trainer's ``precision="tf32"``): there it made the B=4096 step 1.14x faster (H200,
``benchmarks/RESULTS.md``) and kept NE. With float32 matmuls it stays off: its 3xTF32 dots
are slower than cuBLAS's float32 GEMMs. :data:`ENABLED` overrides that choice.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ranknas.evaluator.tiny_attention import (
    _attention_reference,
    _attention_reference_backward,
)

__all__ = ["ENCODER_WEIGHTS", "encoder_reference", "encoder_reference_backward",
           "fused_encoder_fits", "split_grads", "tiny_encoder_layer"]

EPS = 1e-5  # nn.LayerNorm's
#: Whether the masked transformer runs :func:`tiny_encoder_layer`: ``None`` (default) on CUDA
#: with TF32 matmuls only, ``True`` wherever it fits (the CPU runs the reference), ``False``
#: never.
ENABLED: bool | None = None
#: The order of :func:`tiny_encoder_layer`'s ``weights``, as attributes of an
#: ``ElasticTransformer``: in-projection (``[3E, E]``, ``[3E]``), out-projection, first
#: LayerNorm, FFN (``fc1``, ``fc2``: ``[E, E]``, ``[E]``), second LayerNorm.
ENCODER_WEIGHTS = ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                   "attn.out_proj.bias", "attn_norm.weight", "attn_norm.bias", "fc1.weight",
                   "fc1.bias", "fc2.weight", "fc2.bias", "ffn_norm.weight", "ffn_norm.bias")


def encoder_reference(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
                      weights: list[torch.Tensor], heads: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The encoder layer over ``z [B, L, E]``.

    Args:
        z: Tokens ``[B, L, E]``.
        key_bias: ``[L]`` added to every query's scores (0, or -inf for a padded token).
        row_mask: ``[L]`` 0/1 multiplied into the output rows (padded tokens out as zeros).
        weights: The layer's parameters in :data:`ENCODER_WEIGHTS` order.
        heads: Attention heads.

    Returns:
        ``(out [B, L, E], att [B, L, E], lse [B*heads, L])``: the layer's output, the
        attention's output before the out-projection and its log-sum-exp (both for backward).
    """
    in_w, in_b, out_w, out_b, n1_w, n1_b, f1_w, f1_b, f2_w, f2_b, n2_w, n2_b = weights
    e = z.shape[-1]
    att, lse = _attention_reference(F.linear(z, in_w, in_b), heads, key_bias)
    y1 = F.layer_norm(z + F.linear(att, out_w, out_b), (e,), n1_w, n1_b, EPS)
    v2 = y1 + F.linear(torch.relu(F.linear(y1, f1_w, f1_b)), f2_w, f2_b)
    out = F.layer_norm(v2, (e,), n2_w, n2_b, EPS) * row_mask[:, None].to(z.dtype)
    return out, att, lse


def _norm_backward(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm over the last dim of rows ``x [R, E]``: ``(dx, dweight, dbias)``."""
    mean = x.mean(-1, keepdim=True)
    rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + EPS)
    xhat = (x - mean) * rstd
    dxhat = grad * weight
    dx = rstd * (dxhat - dxhat.mean(-1, keepdim=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdim=True))
    return dx, (grad * xhat).sum(0), grad.sum(0)


def encoder_reference_backward(grad: torch.Tensor, z: torch.Tensor, key_bias: torch.Tensor,
                               row_mask: torch.Tensor, weights: list[torch.Tensor],
                               heads: int, att: torch.Tensor, lse: torch.Tensor
                               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(d loss / d z, [d loss / d weight, ...])`` of :func:`encoder_reference`, from
    ``grad = d loss / d out [B, L, E]`` and the forward's ``att`` and ``lse``."""
    in_w, in_b, out_w, out_b, n1_w, n1_b, f1_w, f1_b, f2_w, f2_b, n2_w, _ = weights
    b, n, e = z.shape
    rows = z.reshape(-1, e)
    qkv = F.linear(z, in_w, in_b)
    att_rows = att.reshape(-1, e)
    u = rows + F.linear(att_rows, out_w, out_b)
    y1 = F.layer_norm(u, (e,), n1_w, n1_b, EPS)
    pre = F.linear(y1, f1_w, f1_b)
    hidden = torch.relu(pre)
    v2 = y1 + F.linear(hidden, f2_w, f2_b)
    dy2 = (grad * row_mask[:, None].to(grad.dtype)).reshape(-1, e)
    dv2, dn2_w, dn2_b = _norm_backward(v2, n2_w, dy2)
    dpre = (dv2 @ f2_w) * (pre > 0)
    dy1 = dv2 + dpre @ f1_w
    du, dn1_w, dn1_b = _norm_backward(u, n1_w, dy1)
    datt = (du @ out_w).reshape(b, n, e)
    dqkv = _attention_reference_backward(qkv, att, datt, lse, heads, key_bias).reshape(-1, 3 * e)
    dz = (du + dqkv @ in_w).reshape(b, n, e)
    grads = [dqkv.T @ rows, dqkv.sum(0), du.T @ att_rows, du.sum(0), dn1_w, dn1_b,
             dpre.T @ y1, dpre.sum(0), dv2.T @ hidden, dv2.sum(0), dn2_w, dn2_b]
    return dz, grads


@torch.library.custom_op("ranknas::tiny_encoder_layer", mutates_args=())
def tiny_encoder_layer(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
                       weights: list[torch.Tensor], heads: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`encoder_reference` as one op (differentiable in ``z`` and ``weights``; the
    masks are constants). Returns ``(out, att, lse)``; callers want ``out``."""
    return encoder_reference(z, key_bias, row_mask, weights, heads)


@torch.library.custom_op("ranknas::tiny_encoder_layer_backward", mutates_args=())
def tiny_encoder_layer_backward(grad: torch.Tensor, z: torch.Tensor, key_bias: torch.Tensor,
                                row_mask: torch.Tensor, weights: list[torch.Tensor],
                                heads: int, att: torch.Tensor, lse: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`encoder_reference_backward` as one op: ``(dz, the weight gradients flattened
    into one tensor)`` (:func:`split_grads`). One tensor, not 12: a custom op's outputs may
    not alias, so separate ones would cost a copy each."""
    dz, grads = encoder_reference_backward(grad, z, key_bias, row_mask, weights, heads, att,
                                           lse)
    return dz, _flat(grads, z)


def _flat(grads: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1).to(_flat_dtype(z)) for g in grads])


def _flat_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.promote_types(z.dtype, torch.float32)


def split_grads(flat: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """The weight gradients in ``flat`` (``ENCODER_WEIGHTS`` order) as views shaped like
    ``weights`` (cast where a weight's dtype differs)."""
    parts = flat.split([w.numel() for w in weights])
    return [p.view_as(w).to(w.dtype) for p, w in zip(parts, weights, strict=True)]


@tiny_encoder_layer.register_fake
def _(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
      weights: list[torch.Tensor], heads: int
      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, _ = z.shape
    return (torch.empty_like(z), torch.empty_like(z),
            z.new_empty(b * heads, n, dtype=torch.promote_types(z.dtype, torch.float32)))


@tiny_encoder_layer_backward.register_fake
def _(grad: torch.Tensor, z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
      weights: list[torch.Tensor], heads: int, att: torch.Tensor, lse: torch.Tensor
      ) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(z), z.new_empty(sum(w.numel() for w in weights),
                                            dtype=_flat_dtype(z))


def _setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    z, key_bias, row_mask, weights, heads = inputs
    ctx.save_for_backward(z, key_bias, row_mask, output[1], output[2], *weights)
    ctx.heads = heads
    ctx.set_materialize_grads(False)  # att's and lse's gradients: None, not filled zeros


def _grad(ctx: Any, grad_out: torch.Tensor | None, _grad_att: Any, _grad_lse: Any) -> tuple:
    z, key_bias, row_mask, att, lse, *weights = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, [None] * len(weights), None
    # any strides: the kernels read views (a range of the step's buffers) in place
    dz, flat = tiny_encoder_layer_backward(grad_out, z, key_bias, row_mask, weights,
                                           ctx.heads, att, lse)
    return dz, None, None, split_grads(flat, weights), None


tiny_encoder_layer.register_autograd(_grad, setup_context=_setup)


def fused_encoder_fits(z: torch.Tensor, heads: int) -> bool:
    """Whether the masked transformer runs :func:`tiny_encoder_layer` on ``z [B, L, E]``:
    as :data:`ENABLED` says, float32 or float64 outside autocast, and on CUDA shapes the
    kernels take."""
    if ENABLED is False or z.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_autocast_enabled(z.device.type):
        return False
    if ENABLED is None and not (z.is_cuda and torch.backends.cuda.matmul.allow_tf32):
        return False
    return not z.is_cuda or _kernels_fit(z, heads)


def _kernels_fit(z: torch.Tensor, heads: int) -> bool:
    try:
        from ranknas.supernet.encoder_kernels import fits
    except ImportError:  # no Triton
        return False
    return fits(z, heads)


def _precision() -> str:
    """``tl.dot``'s input precision: TF32 where the matmuls run TF32, else 3xTF32 (~fp32)."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


@tiny_encoder_layer.register_kernel("cuda")
def _(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
      weights: list[torch.Tensor], heads: int
      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not _kernels_fit(z, heads):
        return encoder_reference(z, key_bias, row_mask, weights, heads)
    from ranknas.supernet.encoder_kernels import encoder_forward

    return encoder_forward(z, key_bias, row_mask, weights, heads, _precision())


@tiny_encoder_layer_backward.register_kernel("cuda")
def _(grad: torch.Tensor, z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
      weights: list[torch.Tensor], heads: int, att: torch.Tensor, lse: torch.Tensor
      ) -> tuple[torch.Tensor, torch.Tensor]:
    if not _kernels_fit(z, heads):
        dz, grads = encoder_reference_backward(grad, z, key_bias, row_mask, weights, heads,
                                               att, lse)
        return dz, _flat(grads, z)
    from ranknas.supernet.encoder_kernels import encoder_backward

    return encoder_backward(grad, z, key_bias, row_mask, weights, heads, att, lse, _precision())
