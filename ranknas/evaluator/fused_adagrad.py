"""Adagrad's dense update in one pass per tensor: ``s += g^2; p -= lr * g / (sqrt(s) + eps)``.

``torch.optim.Adagrad`` has no fused CUDA kernel, and its ``foreach`` form (what the graphed
steps of :mod:`ranknas.evaluator.fast_train` and :mod:`ranknas.supernet.masked_step` ran) is
four passes: ``addcmul_`` into the sums, ``sqrt`` into a new tensor, ``add_`` of eps, and
``addcdiv_`` into the parameters. That reads and writes ~48 bytes per element where the update
needs 20 (read p, g, s; write p, s), plus a weight-decay pass when there is one. On a
segmented supernet step it was ~0.75 ms of a ~9 ms B=4096 step on an H200.

:func:`adagrad_` runs one Triton kernel per tensor of at least 128k elements on CUDA
(float32, contiguous), and the ``foreach`` ops for the rest, batched
(:func:`adagrad_reference`): the same math, in the same order, as ``torch.optim.Adagrad``
without lr decay; the square root is correctly rounded.
"""

from __future__ import annotations

import torch

try:  # only for the CUDA kernel; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["ENABLED", "adagrad_", "adagrad_reference", "dense_update_"]

#: Whether :func:`adagrad_` runs its kernel where it fits (False: always the reference).
ENABLED = True
_BLOCK = 2048
#: Smaller tensors go to the ``foreach`` ops, four launches for all of them: a kernel per
#: tensor would cost more in launches than it saves in bytes (a transformer layer of
#: ``nasrec_full`` has 15 tensors of at most 11k elements).
_MIN_KERNEL = 1 << 17


def adagrad_reference(params: list[torch.Tensor], grads: list[torch.Tensor],
                      sums: list[torch.Tensor], lr: float, eps: float,
                      weight_decay: float = 0.0) -> None:
    """:func:`adagrad_` as ``torch._foreach_*`` ops."""
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_addcmul_(sums, grads, grads)
    std = torch._foreach_sqrt(sums)
    torch._foreach_add_(std, eps)
    torch._foreach_addcdiv_(params, grads, std, value=-lr)


@torch.no_grad()
def dense_update_(params: list[torch.Tensor], grads: list[torch.Tensor],
                  sums: list[torch.Tensor] | None, lr: float, eps: float,
                  weight_decay: float = 0.0) -> None:
    """The graphed steps' dense update: :func:`adagrad_` with accumulators ``sums``, plain
    SGD (``torch.optim.SGD``'s math, no momentum) without."""
    if sums is not None:
        adagrad_(params, grads, sums, lr, eps, weight_decay)
        return
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_add_(params, grads, alpha=-lr)


def _fits(p: torch.Tensor, g: torch.Tensor, s: torch.Tensor) -> bool:
    return all(t.is_cuda and t.dtype == torch.float32 and t.is_contiguous() for t in (p, g, s))


@torch.no_grad()
def adagrad_(params: list[torch.Tensor], grads: list[torch.Tensor], sums: list[torch.Tensor],
             lr: float, eps: float, weight_decay: float = 0.0) -> None:
    """One Adagrad step in place on ``params`` and their accumulators ``sums``.

    Args:
        params: Parameters (any shapes), updated in place.
        grads: Their gradients (same shapes).
        sums: Their running sums of squared gradients, updated in place.
        lr: Learning rate.
        eps: Added to the square root of the sums.
        weight_decay: L2 decay added to the gradient first (0: none).
    """
    if not (ENABLED and triton is not None) or torch.compiler.is_compiling():
        adagrad_reference(params, grads, sums, lr, eps, weight_decay)
        return
    rest = []
    for p, g, s in zip(params, grads, sums, strict=True):
        if p.numel() >= _MIN_KERNEL and _fits(p, g, s):
            _launch(p, g, s, lr, eps, weight_decay)
        else:
            rest.append((p, g, s))
    if rest:
        adagrad_reference(*map(list, zip(*rest, strict=True)), lr, eps, weight_decay)


def _launch(p: torch.Tensor, g: torch.Tensor, s: torch.Tensor, lr: float, eps: float,
            weight_decay: float) -> None:
    """The kernel on one contiguous float32 tensor (CPU tensors under Triton's
    interpreter)."""
    n = p.numel()
    _adagrad_kernel[(triton.cdiv(n, _BLOCK),)](p, g, s, n, lr, eps, weight_decay,
                                               DECAY=bool(weight_decay), BLOCK=_BLOCK)


if triton is not None:

    @triton.jit
    def _adagrad_kernel(p_ptr, g_ptr, s_ptr, n, lr, eps, decay, DECAY: tl.constexpr,
                        BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(p_ptr + offs, mask=mask)
        g = tl.load(g_ptr + offs, mask=mask)
        if DECAY:
            g = g + decay * p
        s = tl.load(s_ptr + offs, mask=mask) + g * g
        tl.store(s_ptr + offs, s, mask=mask)
        tl.store(p_ptr + offs, p - lr * (g / (tl.sqrt_rn(s) + eps)), mask=mask)
