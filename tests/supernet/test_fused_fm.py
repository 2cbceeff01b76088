"""FM's interaction as one op: PyTorch's ops on CPU, the Triton kernels on CUDA."""

from __future__ import annotations

import pytest
import torch

from ranknas.supernet.fused_fm import fm_interaction

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need CUDA")


def _reference(y: torch.Tensor) -> torch.Tensor:
    total = y.sum(dim=1)
    return total * total - (y * y).sum(dim=1)


def _range(batch: int, n: int, width: int, e: int = 16, **kw) -> torch.Tensor:
    """Fields ``[B, n, E]``: a range of a wider buffer, as the segmented step passes them."""
    buf = torch.randn(batch, width, e, generator=torch.Generator().manual_seed(0), **kw)
    return buf.narrow(1, 1, n)


def test_the_op_and_its_autograd_match_the_formula() -> None:
    """The custom op's own (CPU) forward and backward, which its CUDA kernels mirror."""
    y = _range(5, 7, 9, dtype=torch.float64).requires_grad_()
    out, total = torch.ops.ranknas.fm_interaction(y)
    assert torch.allclose(out, _reference(y)) and torch.allclose(total.double(), y.sum(1))
    assert torch.autograd.gradcheck(lambda t: torch.ops.ranknas.fm_interaction(t)[0], (y,))
    assert torch.equal(fm_interaction(y), _reference(y))  # CPU: the PyTorch ops


@needs_gpu
@pytest.mark.parametrize(("batch", "n", "width", "e"), [(4096, 64, 200, 16), (37, 5, 9, 3)])
def test_kernels_match_the_ops_on_a_buffer_range(batch: int, n: int, width: int,
                                                 e: int) -> None:
    y = _range(batch, n, width, e).cuda().requires_grad_()
    grad = torch.randn(batch, e, device="cuda")
    got = fm_interaction(y)
    want = _reference(y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    (dy,) = torch.autograd.grad(got, y, grad)
    (want_dy,) = torch.autograd.grad(want, y, grad)
    torch.testing.assert_close(dy, want_dy, rtol=1e-5, atol=1e-4)


def test_rejects_other_ranks_with_the_shape() -> None:
    with pytest.raises(ValueError, match=r"\[B, N, E\], got shape \(2, 3\)"):
        fm_interaction(torch.zeros(2, 3))
