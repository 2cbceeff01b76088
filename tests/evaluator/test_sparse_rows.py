"""Embedding-row kernels: the gather, the per-row gradient sums and Adagrad on rows match
PyTorch's index ops (on the CPU the module runs those ops; on CUDA its Triton kernels)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ranknas.evaluator.fast_train import IndexAdagrad
from ranknas.evaluator.sparse_rows import adagrad_rows_, gather_rows, segment_sums

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the kernels run on CUDA"))]


def _case(device: str, rows: int = 200, lookups: int = 300, e: int = 16):
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(rows, e, generator=gen)
    ids = torch.randint(0, rows // 4, (lookups // 10, 10), generator=gen)  # duplicates
    grad = torch.randn(lookups, e, generator=gen)
    return table.to(device), ids.to(device), grad.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_gather_rows_is_embedding(device):
    table, ids, _ = _case(device)
    got = gather_rows(table, ids)
    assert got.shape == (*ids.shape, table.shape[1])
    torch.testing.assert_close(got, F.embedding(ids, table), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_segment_sums_add_each_rows_duplicates(device):
    _, ids, grad = _case(device)
    order = torch.argsort(ids.reshape(-1))
    segment = ids.reshape(-1)[order]  # the output row of an entry: its id
    got = segment_sums(grad, order, segment)
    want = torch.zeros_like(grad)
    for j in range(len(order)):
        want[segment[j]] += grad[order[j]]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_adagrad_rows_matches_torch_sparse_adagrad(device):
    """Three IndexAdagrad steps (coalesce, then the row update; padding entries included)
    equal torch.optim.Adagrad on the same sparse gradients."""
    table, ids, grad = _case(device)
    weight = torch.nn.Parameter(table.clone())
    ours = IndexAdagrad(weight, 0.05, 1e-8)
    reference = torch.nn.Parameter(table.clone())
    opt = torch.optim.Adagrad([reference], lr=0.05, eps=1e-8)
    for step in range(3):
        g = grad * (step + 1)
        ours.step(*ours.coalesce(ids, g))
        reference.grad = torch.sparse_coo_tensor(ids.reshape(1, -1), g, table.shape)
        opt.step()
    torch.testing.assert_close(weight.detach(), reference.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.state, opt.state[reference]["sum"].to_dense(), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_padding_on_a_real_row_loses_no_update(device):
    """A zero-gradient entry on a row that a real entry updates (how IndexAdagrad pads)."""
    table, _, _ = _case(device, rows=8, e=4)
    rows = torch.tensor([3, 5, 3, 3], device=device)
    grad = torch.zeros(4, 4, device=device)
    grad[:2] = 1.0
    weight, state = table.clone(), torch.ones_like(table)
    adagrad_rows_(weight, state, rows, grad, 0.5, 1e-8)
    step = 0.5 / (2.0 ** 0.5 + 1e-8)
    for r in (3, 5):
        torch.testing.assert_close(state[r], torch.full((4,), 2.0, device=device))
        torch.testing.assert_close(weight[r], table[r] - step)
    untouched = [r for r in range(8) if r not in (3, 5)]
    torch.testing.assert_close(weight[untouched], table[untouched], rtol=0, atol=0)


def test_sgd_rows():
    table, _, _ = _case("cpu", rows=8, e=4)
    weight = table.clone()
    adagrad_rows_(weight, None, torch.tensor([1, 6]), torch.ones(2, 4), 0.1, 1e-8)
    torch.testing.assert_close(weight[[1, 6]], table[[1, 6]] - 0.1)
