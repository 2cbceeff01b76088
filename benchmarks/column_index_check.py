"""``ranknas.supernet.column_index``'s Triton kernels against PyTorch's ``index_select`` and
``index_add_``: correctness, and (``--bench``, CUDA) GPU time at the segmented step's sizes.

    python benchmarks/column_index_check.py --bench          # on a GPU
    TRITON_INTERPRET=1 python benchmarks/column_index_check.py   # the kernels' math on CPU

The kernels are launched directly (``column_index`` itself sends 2-D tensors to PyTorch), so
this also times the 2-D cases that decided that. The field-major (``transposed``) kernels are
timed against what they replace: PyTorch's gather plus the copy into ``[R, E, n]`` (and the
copy back before the scatter-add). Times are GPU us per call: 20 calls
captured in one CUDA graph and replayed, so host launch costs do not count. Indices are
sorted random columns, as a merged input's storage positions are.
"""

from __future__ import annotations

import torch
from bench_common import graph_replay_us, kernel_check_main

from ranknas.supernet import column_index as ci

CHECKS = ((7, 30, 20, ()), (5, 40, 33, (16,)), (300, 9, 5, (3,)), (3, 2100, 2064, ()),
          (9, 300, 170, (16,)))
BENCH = (("fields [4096, 400 -> 170, 16]", 4096, 400, 170, (16,)),
         ("fields [4096, 300 -> 64, 16]", 4096, 300, 64, (16,)),
         ("features [4096, 6000 -> 2064]", 4096, 6000, 2064, ()),
         ("weight columns [1024, 2100 -> 2064]", 1024, 2100, 2064, ()),
         ("pairs [4096, 2116 -> 1035]", 4096, 2116, 1035, ()))


def check(device: str) -> bool:
    gen = torch.Generator().manual_seed(0)
    good = True
    for rows, big, n, tail in CHECKS:
        src = torch.randn(rows, big, *tail, generator=gen).to(device)
        index = torch.randint(0, big, (n,), generator=gen).to(device)
        index[-3:] = big - 1  # repeats, as padding onto the zero column
        for transposed in (False, True) if len(tail) == 1 else (False,):
            want_out = src.index_select(1, index)
            if transposed:
                want_out = want_out.transpose(1, 2).contiguous()
            out = torch.empty_like(want_out)
            ci._launch(src, out, index, None, scatter=False, transposed=transposed)
            small = torch.randn(want_out.shape, generator=gen).to(device)
            for skip in (None, big - 1):
                dst = torch.randn(rows, big, *tail, generator=gen).to(device)
                want = dst.clone().index_add_(
                    1, index, small.transpose(1, 2) if transposed else small)
                ci._launch(dst, small, index, skip, scatter=True, transposed=transposed)
                keep = slice(None) if skip is None else slice(0, big - 1)
                err = (dst[:, keep] - want[:, keep]).abs().max().item()
                gathered = torch.equal(out, want_out)
                good &= gathered and err < 1e-5
                print(f"[{rows}, {big} -> {n}, {tail}] transposed={transposed} skip={skip}: "
                      f"gather {'ok' if gathered else 'FAIL'}, "
                      f"scatter-add max err {err:.1e} {'ok' if err < 1e-5 else 'FAIL'}")
    return good


def bench() -> None:
    print("| case | op | PyTorch us | kernel us | PyTorch / kernel |\n|---|---|---:|---:|---:|")
    for name, rows, big, n, tail in BENCH:
        _bench_case(name, rows, big, n, tail)


def _bench_case(name: str, rows: int, big: int, n: int, tail: tuple[int, ...]) -> None:
    src = torch.randn(rows, big, *tail, device="cuda")
    index = torch.randperm(big, device="cuda")[:n].sort().values
    small = torch.randn(rows, n, *tail, device="cuda")
    out = torch.empty_like(small)
    pairs = {
        "gather": (lambda: src.index_select(1, index),
                   lambda: ci._launch(src, out, index, None, scatter=False, transposed=False)),
        "scatter-add": (lambda: src.index_add_(1, index, small),
                        lambda: ci._launch(src, small, index, None, scatter=True,
                                           transposed=False)),
    }
    if len(tail) == 1:  # fields: field-major against a gather (or scatter) and a copy
        small_t = small.transpose(1, 2).contiguous()
        out_t = torch.empty_like(small_t)
        pairs["gather, field-major"] = (
            lambda: ci.gather_cols(src, index).transpose(1, 2).contiguous(),
            lambda: ci._launch(src, out_t, index, None, scatter=False, transposed=True))
        pairs["scatter-add, field-major"] = (
            lambda: ci.scatter_add_cols_(src, index, small_t.transpose(1, 2)),
            lambda: ci._launch(src, small_t, index, None, scatter=True, transposed=True))
    for op, (torch_fn, kernel_fn) in pairs.items():
        ref, ours = graph_replay_us(torch_fn), graph_replay_us(kernel_fn)
        print(f"| {name} | {op} | {ref:.1f} | {ours:.1f} | {ref / ours:.2f} |")


def main() -> None:
    kernel_check_main(__doc__, "column_index", check, lambda args: bench())


if __name__ == "__main__":
    main()
