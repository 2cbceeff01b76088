"""The one-pass Adagrad update: torch.optim.Adagrad's math, on CUDA in one kernel a tensor."""

from __future__ import annotations

import pytest
import torch

from ranknas.evaluator.fused_adagrad import adagrad_, adagrad_reference, dense_update_

SHAPES = ((33, 17), (1024,), (4097,), (3, 4, 5), (512, 257))  # the last: a kernel


def _state(device: str):
    gen = torch.Generator().manual_seed(0)
    return [[torch.randn(s, generator=gen).to(device) for s in SHAPES] for _ in range(2)]


def _torch_optim(cls, params, grads, steps: int, **options):
    """``(copies of params, optimizer)`` after ``steps`` steps of ``cls`` on ``grads``."""
    reference = [torch.nn.Parameter(p.clone()) for p in params]
    opt = cls(reference, **options)
    for _ in range(steps):
        for p, g in zip(reference, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return reference, opt


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_matches_torch_optim_adagrad(decay):
    params, grads = _state("cpu")
    reference, opt = _torch_optim(torch.optim.Adagrad, params, grads, 3, lr=0.05, eps=1e-6,
                                  weight_decay=decay)
    sums = [torch.zeros_like(p) for p in params]
    for _ in range(3):
        adagrad_(params, grads, sums, 0.05, 1e-6, decay)
    for got, want in zip(params, reference, strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7)
    for got, p in zip(sums, reference, strict=True):
        torch.testing.assert_close(got, opt.state[p]["sum"], rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernel runs on CUDA")
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_cuda_kernel_matches_the_reference(decay):
    params, grads = _state("cuda")
    params.append(torch.randn(8, 6, device="cuda").t())  # not contiguous: the reference
    grads.append(torch.randn(6, 8, device="cuda"))
    want = [p.clone() for p in params]
    sums = [torch.rand_like(p) for p in params]
    want_sums = [s.clone() for s in sums]
    adagrad_reference(want, grads, want_sums, 0.05, 1e-8, decay)
    adagrad_(params, grads, sums, 0.05, 1e-8, decay)
    for got, ref in zip(params + sums, want + want_sums, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_dense_update_without_sums_is_sgd(decay):
    params, grads = _state("cpu")
    reference, _ = _torch_optim(torch.optim.SGD, params, grads, 1, lr=0.05, weight_decay=decay)
    dense_update_(params, grads, None, 0.05, 1e-8, decay)
    for got, want in zip(params, reference, strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7)
