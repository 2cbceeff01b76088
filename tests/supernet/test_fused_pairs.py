"""The dot-product's pairwise products: the reference's pair order on CPU, the kernels on CUDA."""

from __future__ import annotations

import pytest
import torch

from ranknas.supernet.fused_pairs import pairs_reference, pairwise_dots

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need CUDA")


def _inputs(fields: int, dense: bool, on: bool, device: str = "cpu"):
    gen = torch.Generator().manual_seed(fields)
    y = torch.randn(6, fields, 16, generator=gen, dtype=torch.float64)
    d = torch.randn(6, 16, generator=gen, dtype=torch.float64) if dense else None
    flag = torch.tensor([float(on)]) if dense else None
    n = fields + dense
    rows, cols = torch.tril_indices(n, n, offset=-1)
    index = rows * n + cols
    return tuple(None if t is None else t.to(device) for t in (y, d, flag, index))


@pytest.mark.parametrize(("dense", "on"), [(True, True), (True, False), (False, False)])
def test_reference_lists_the_pairs_below_the_diagonal_then_zeros(dense: bool, on: bool) -> None:
    y, d, flag, index = _inputs(5, dense, on)
    z = torch.cat([d.unsqueeze(1), y], 1) if on else y
    out = pairs_reference(y, d, flag, index, 20)
    want = [[float(z[b, i] @ z[b, j]) for i in range(z.shape[1]) for j in range(i)]
            for b in range(6)]
    n = len(want[0])
    torch.testing.assert_close(out[:, :n], torch.tensor(want, dtype=out.dtype))
    assert out[:, n:].abs().max() == 0  # without a dense input, the zero row's pairs too


@needs_gpu
@pytest.mark.parametrize(("fields", "dense", "on", "cols"),
                         [(45, True, True, 1040), (45, True, False, 1040), (26, True, True, 352),
                          (32, False, False, 496), (5, True, True, 15)])
def test_kernels_equal_the_reference(fields: int, dense: bool, on: bool, cols: int) -> None:
    y, d, flag, index = _inputs(fields, dense, on, "cuda")
    y = y.float().requires_grad_()
    d = None if d is None else d.float().requires_grad_()
    grad = torch.randn(6, cols, device="cuda")
    leaves = [y] + ([d] if d is not None else [])
    got = pairwise_dots(y, d, flag, index, cols)
    want = pairs_reference(y, d, flag, index, cols)
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, leaves, grad), torch.autograd.grad(want, leaves, grad),
                    strict=True):
        torch.testing.assert_close(g, w)


@needs_gpu
def test_a_wrong_pair_count_raises() -> None:
    y, d, flag, index = _inputs(5, True, True, "cuda")
    with pytest.raises(ValueError, match="15 pairs for 6 rows, and cols 10"):
        pairwise_dots(y.float(), d.float(), flag, index, 10)
