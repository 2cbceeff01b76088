"""The fused masked LayerNorm: its reference and backward formula on CPU, its kernels on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ranknas.evaluator.tiny_attention import tiny_head_attention
from ranknas.supernet.elastic_base import SlicedNorm
from ranknas.supernet.fused_encoder import tiny_encoder_layer
from ranknas.supernet.fused_norm import fused_norm_fits, masked_layer_norm
from ranknas.supernet.masked_base import layer_norm, masked_norm

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need CUDA")


def _inputs(shape: tuple[int, ...], active: int | None, dtype: torch.dtype = torch.float64,
            device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 1
    w, b = torch.randn(n, generator=gen, dtype=dtype), torch.randn(n, generator=gen, dtype=dtype)
    mask = inv = None
    if active is not None:
        mask = (torch.arange(n) < active).to(dtype)
        inv = torch.tensor([1.0 / active], dtype=dtype)
    return tuple(t if t is None else t.to(device) for t in (x, w, b, mask, inv))


@pytest.mark.parametrize("active", [None, 1, 9, 12])
def test_backward_formula_passes_gradcheck(active: int | None) -> None:
    x, w, b, mask, inv = _inputs((4, 3, 12), active)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: masked_layer_norm(*a, mask, inv), (x, w, b))


def test_equals_layer_norm_over_the_active_features() -> None:
    x, w, b, mask, inv = _inputs((6, 20), 13)
    out = masked_layer_norm(x, w, b, mask, inv)
    torch.testing.assert_close(out[:, :13], F.layer_norm(x[:, :13], (13,), w[:13], b[:13]))
    assert out[:, 13:].abs().max() == 0
    torch.testing.assert_close(masked_layer_norm(x, w, b), F.layer_norm(x, (20,), w, b))


def test_mask_and_inv_come_together() -> None:
    x, w, b, mask, inv = _inputs((2, 4), 3)
    with pytest.raises(ValueError, match="mask and inv"):
        masked_layer_norm(x, w, b, mask)
    with pytest.raises(ValueError, match="mask and inv"):
        masked_layer_norm(x, w, b, inv=inv)


def test_inactive_features_get_no_gradient() -> None:
    x, w, b, mask, inv = _inputs((5, 16), 7)
    for t in (x, w, b):
        t.requires_grad_()
    (masked_layer_norm(x, w, b, mask, inv) * torch.randn(5, 16, dtype=x.dtype)).sum().backward()
    assert x.grad[:, 7:].abs().max() == 0
    assert w.grad[7:].abs().max() == 0 and b.grad[7:].abs().max() == 0


def test_cpu_keeps_the_pytorch_ops() -> None:
    x, w, b, mask, inv = _inputs((3, 8), 5, dtype=torch.float32)
    assert not fused_norm_fits(x)
    norm = SlicedNorm(8)
    assert masked_norm(x, norm, mask, inv).grad_fn.name() == "MulBackward0"  # not the custom op
    assert layer_norm(x, w, b).equal(F.layer_norm(x, (8,), w, b))


@needs_gpu
@pytest.mark.parametrize(("shape", "active"), [
    ((4096, 1024), 700), ((4096, 1024), None), ((257, 37), 20), ((3, 50, 16), None),
    ((2, 5, 8, 100), 64), ((4096, 16, 48), 33), ((1, 1), None), ((5, 8192), 8000),
])
def test_kernels_equal_the_reference(shape: tuple[int, ...], active: int | None) -> None:
    ref_in = _inputs(shape, active, dtype=torch.float64)
    dev_in = tuple(t if t is None else t.float().cuda() for t in ref_in)
    grad = torch.randn(shape, dtype=torch.float64)

    def run(x, w, b, mask, inv, g):
        x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
        out = masked_layer_norm(x, w, b, mask, inv)
        out.backward(g)
        return out.detach(), x.grad, w.grad, b.grad

    want = run(*ref_in, grad)
    got = run(*dev_in, grad.float().cuda())
    assert fused_norm_fits(dev_in[0])
    for name, g, r in zip(("out", "dx", "dw", "db"), got, want, strict=True):
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g.double().cpu() / scale, r / scale, atol=2e-5, rtol=0,
                                   msg=name)


@needs_gpu
def test_kernels_run_inside_a_cuda_graph() -> None:
    x, w, b, mask, inv = (t.float().cuda() for t in _inputs((64, 96), 50))
    w.requires_grad_()
    static_x = x.clone().requires_grad_()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # warm-up (Triton compiles) off the capture
        masked_layer_norm(static_x, w, b, mask, inv).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    w.grad = None
    with torch.cuda.graph(graph):
        out = masked_layer_norm(static_x, w, b, mask, inv)
    new = torch.randn_like(x)
    static_x.data.copy_(new)
    graph.replay()
    torch.testing.assert_close(out, masked_layer_norm(new, w, b, mask, inv))


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_backwards_fill_no_zero_gradients_for_unused_outputs() -> None:
    """The custom ops' side outputs (statistics, attention output, log-sum-exp) are never
    differentiated: their gradients stay None instead of zero tensors made per backward."""
    torch.manual_seed(0)
    x = torch.randn(6, 16, requires_grad=True)
    weights = [torch.randn(s, requires_grad=True) for s in ((48, 16), (48,), (16, 16), (16,),
                                                             (16,), (16,), (16, 16), (16,),
                                                             (16, 16), (16,), (16,), (16,))]
    outs = [masked_layer_norm(x, weights[4], weights[5]),
            tiny_encoder_layer(x.view(2, 3, 16), torch.zeros(3), torch.ones(3), weights, 8)[0],
            tiny_head_attention(torch.randn(2, 3, 48, requires_grad=True), 8)[0]]
    for out in outs:
        with _Ops() as ops:
            out.sum().backward()
        assert not [n for n in ops.names if n.startswith(("zeros", "fill", "full"))], ops.names
