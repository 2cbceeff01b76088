"""Column gathers and scatter-adds: PyTorch's ops on CPU, the Triton kernels on CUDA."""

from __future__ import annotations

import pytest
import torch

from ranknas.supernet.column_index import gather_cols, scatter_add_cols_

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_gpu)]
SHAPES = [(7, 30, 20, ()), (5, 40, 33, (16,)), (300, 9, 5, (3,)), (3, 2100, 2064, ())]


def _index(big: int, n: int, gen: torch.Generator) -> torch.Tensor:
    index = torch.randint(0, big, (n,), generator=gen)
    index[-3:] = big - 1  # repeats: padding onto the last column
    return index


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("rows", "big", "n", "tail"), SHAPES)
def test_gather_and_its_gradient_equal_index_select(device: str, rows: int, big: int, n: int,
                                                    tail: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(rows, big, *tail, generator=gen).to(device).requires_grad_()
    index = _index(big, n, gen).to(device)
    grad = torch.randn(rows, n, *tail, generator=gen).to(device)
    out = gather_cols(src, index)
    assert torch.equal(out, src.index_select(1, index))
    (got,) = torch.autograd.grad(out, src, grad)
    (want,) = torch.autograd.grad(src.index_select(1, index), src, grad)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("rows", "big", "n", "tail"), SHAPES)
def test_scatter_add_equals_index_add_off_the_skipped_column(
        device: str, rows: int, big: int, n: int, tail: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    dst = torch.randn(rows, big, *tail, generator=gen).to(device)
    src = torch.randn(rows, n, *tail, generator=gen).to(device)
    index = _index(big, n, gen).to(device)
    want = dst.clone().index_add_(1, index, src)
    got = scatter_add_cols_(dst, index, src, skip=big - 1)
    assert got is dst
    torch.testing.assert_close(dst[:, :-1], want[:, :-1])


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_add_without_skip_sums_repeats(device: str) -> None:
    dst = torch.zeros(2, 4, device=device)
    src = torch.ones(2, 5, device=device)
    scatter_add_cols_(dst, torch.tensor([3, 3, 0, 3, 1], device=device), src)
    assert dst.tolist() == [[1.0, 1.0, 0.0, 3.0]] * 2


FIELDS = [(5, 40, 33, (16,)), (300, 9, 5, (3,)), (9, 300, 170, (16,))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("rows", "big", "n", "tail"), FIELDS)
def test_field_major_gather_scatter_equal_the_transposed_ops(
        device: str, rows: int, big: int, n: int, tail: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(2)
    src = torch.randn(rows, big, *tail, generator=gen).to(device).requires_grad_()
    index = _index(big, n, gen).to(device)
    grad = torch.randn(rows, *tail, n, generator=gen).to(device)
    out = gather_cols(src, index, transposed=True)
    want = src.index_select(1, index).transpose(1, 2)
    assert out.is_contiguous() and torch.equal(out, want)
    (got,) = torch.autograd.grad(out, src, grad)
    torch.testing.assert_close(got, torch.autograd.grad(want, src, grad)[0])
    dst = torch.randn(rows, big, *tail, generator=gen).to(device)
    expect = dst.clone().index_add_(1, index, grad.transpose(1, 2))
    scatter_add_cols_(dst, index, grad, skip=big - 1, transposed=True)
    torch.testing.assert_close(dst[:, :-1], expect[:, :-1])


def test_bad_shapes_raise_with_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"transposed takes fields \[R, N, E\], got shape"):
        gather_cols(torch.zeros(2, 4), torch.tensor([0]), transposed=True)
    with pytest.raises(ValueError, match=r"agree in R and tail; got src \(3, 5\), dst \(2, 4\)"):
        scatter_add_cols_(torch.zeros(2, 4), torch.tensor([0]), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="index must be 1-D"):
        gather_cols(torch.zeros(2, 4), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="dst must be contiguous"):
        scatter_add_cols_(torch.zeros(4, 2).t(), torch.tensor([0]), torch.zeros(2, 1))
