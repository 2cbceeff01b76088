"""The sum of partial rows: PyTorch's on CPU, the Triton kernel on CUDA."""

from __future__ import annotations

import pytest
import torch

from ranknas.supernet.partial_sums import sum_partials

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
@pytest.mark.parametrize("shape", [(1, 5), (528, 1696), (512, 2048), (130, 33), (7, 0)])
def test_equals_the_sum_over_rows(device: str, shape: tuple[int, int]) -> None:
    part = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    got = sum_partials(part)
    assert got.shape == (shape[1],) and got.dtype == torch.float32
    torch.testing.assert_close(got, part.double().sum(0).float(), rtol=1e-5, atol=1e-5)


def test_rejects_other_ranks_with_the_shape() -> None:
    with pytest.raises(ValueError, match=r"\[P, C\], got shape \(2, 3, 4\)"):
        sum_partials(torch.zeros(2, 3, 4))
