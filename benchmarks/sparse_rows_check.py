"""``ranknas.evaluator.sparse_rows``' kernels against PyTorch's index ops, and (``--bench``,
CUDA) GPU time at a supernet step's shapes: B=4096 lookups of the 26 Criteo fields (capped
at 0.5M rows each), E=16, uniform ids.

    python benchmarks/sparse_rows_check.py --bench             # on a GPU
    TRITON_INTERPRET=1 python benchmarks/sparse_rows_check.py  # the kernels' math on CPU

Times are GPU us of one call, 20 calls captured in one CUDA graph and replayed.
"""

from __future__ import annotations

import argparse

import torch
from bench_common import (
    criteo_schema,
    graph_replay_us,
    kernel_check_main,
    rel_error,
    report_errors,
)

from ranknas.evaluator import sparse_rows as sr
from ranknas.evaluator.fast_train import IndexAdagrad


def _case(rows: int, lookups: int, e: int, device: str, seed: int = 0):
    """(table, state, ids with duplicates, their row gradients)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, e, generator=gen)
    state = torch.rand(rows, e, generator=gen)
    ids = torch.randint(0, max(1, rows // 3), (lookups,), generator=gen)  # duplicates
    grad = torch.randn(lookups, e, generator=gen)
    return [t.to(device) for t in (table, state, ids, grad)]


def check(device: str) -> bool:
    good = True
    for rows, lookups, e in ((50, 37, 16), (1000, 300, 16), (64, 130, 5), (10, 4, 1),
                             (40, 90, 200)):
        table, state, ids, grad = _case(rows, lookups, e, device)
        gather = rel_error(sr.launch_gather(table, ids), table.index_select(0, ids))
        coalesce = IndexAdagrad(torch.nn.Parameter(table.clone()), 0.05, 1e-8)
        flat_sorted, order = torch.sort(ids)
        is_new = torch.ones_like(flat_sorted, dtype=torch.bool)
        is_new[1:] = flat_sorted[1:] != flat_sorted[:-1]
        segment = torch.cumsum(is_new, 0) - 1
        sums = rel_error(sr.launch_segment_sums(grad, order, segment),
                    torch.zeros_like(grad).index_add_(0, segment, grad.index_select(0, order)))
        # distinct rows, with zero-gradient padding entries on rows that real entries update
        real, sums_ = coalesce.coalesce(ids, grad)
        n = int(segment[-1]) + 1
        real[n:] = real[:lookups - n] if lookups - n <= n else real[0]
        want_w, want_s = table.clone(), state.clone()
        want_s.index_add_(0, real, sums_ * sums_)
        std = want_s.index_select(0, real).sqrt_().add_(1e-8)
        want_w.index_add_(0, real, sums_ / std, alpha=-0.05)
        got_w, got_s = table.clone(), state.clone()
        sr.launch_adagrad_rows(got_w, got_s, real, sums_, 0.05, 1e-8)
        update = max(rel_error(got_w, want_w), rel_error(got_s, want_s))
        # gather, segment sums, Adagrad on rows
        good &= report_errors(f"rows {rows}, lookups {lookups}, E={e}",
                              [gather, sums, update], 1e-6)
    return good


def bench(args: argparse.Namespace) -> None:
    schema = criteo_schema()
    gen = torch.Generator(device="cuda").manual_seed(0)
    offsets = torch.tensor((0, *schema.cardinalities[:-1]), device="cuda").cumsum(0)
    cards = torch.tensor(schema.cardinalities, device="cuda")
    ids = ((torch.rand(4096, schema.num_sparse, device="cuda", generator=gen) * cards).long()
           + offsets).reshape(-1)
    table = torch.randn(schema.total_rows, 16, device="cuda")
    state = torch.zeros_like(table)
    grad = torch.randn(ids.numel(), 16, device="cuda")
    adagrad = IndexAdagrad(torch.nn.Parameter(table), 0.01, 1e-8)
    rows, sums = adagrad.coalesce(ids, grad)
    order = torch.sort(ids)[1]
    segment = torch.arange(ids.numel(), device="cuda")

    def index_adagrad():
        state.index_add_(0, rows, sums * sums)
        std = state.index_select(0, rows).sqrt_().add_(1e-8)
        table.index_add_(0, rows, sums / std, alpha=-0.01)

    cases = {
        "gather rows": (lambda: table.index_select(0, ids), lambda: sr.launch_gather(table, ids)),
        "segment sums": (
            lambda: torch.zeros_like(grad).index_add_(0, segment, grad.index_select(0, order)),
            lambda: sr.launch_segment_sums(grad, order, segment)),
        "Adagrad on rows": (index_adagrad,
                            lambda: sr.launch_adagrad_rows(table, state, rows, sums, 0.01, 1e-8)),
    }
    print(f"\n{ids.numel()} lookups of a {schema.total_rows} x 16 table; GPU us per call\n")
    print("| op | PyTorch | kernel | ratio |\n|---|---:|---:|---:|")
    for name, (torch_fn, kernel_fn) in cases.items():
        base, ours = graph_replay_us(torch_fn), graph_replay_us(kernel_fn)
        print(f"| {name} | {base:.1f} | {ours:.1f} | {base / ours:.2f} |", flush=True)


if __name__ == "__main__":
    kernel_check_main(__doc__, "sparse_rows", check, bench)
