"""``ranknas.supernet.fused_pairs``'s kernels against its PyTorch reference: forward and
gradients, and (``--bench``, CUDA) GPU time at ``nasrec_full``'s dot-product sizes.

    python benchmarks/fused_pairs_check.py --bench               # on a GPU
    TRITON_INTERPRET=1 python benchmarks/fused_pairs_check.py    # the kernels' math on CPU

Times are GPU us of one forward + backward, 20 of them captured in one CUDA graph and
replayed (host launch costs do not count).
"""

from __future__ import annotations

import torch
from bench_common import graph_replay_us, kernel_check_main, rel_error, report_errors

from ranknas.supernet import fused_pairs as fp

# (fields, dense, dense flag on, cols): nasrec_full's 45 kept fields + dense, dlrm's 26, ...
CASES = ((45, True, True, 1040), (45, True, False, 1040), (26, True, True, 352),
         (32, False, False, 496), (5, True, True, 15), (63, False, False, 1960))


def _inputs(batch: int, fields: int, dense: bool, on: bool, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, fields, 16, generator=gen).to(device).requires_grad_()
    d = torch.randn(batch, 16, generator=gen).to(device).requires_grad_() if dense else None
    flag = torch.tensor([float(on)], device=device) if dense else None
    n = fields + dense
    rows, cols = torch.tril_indices(n, n, offset=-1)
    return y, d, flag, (rows * n + cols).to(device)


def _fwd_bwd(fn, y, d, flag, index, cols, grad):
    out = fn(y, d, flag, index, cols)
    leaves = [y] + ([d] if d is not None else [])
    return [out, *torch.autograd.grad(out, leaves, grad)]


def check(device: str) -> bool:
    good = True
    for fields, dense, on, cols in CASES:
        y, d, flag, index = _inputs(64, fields, dense, on, device)
        grad = torch.randn(64, cols, device=device)
        want = _fwd_bwd(fp.pairs_reference, y, d, flag, index, cols, grad)
        got = _fwd_bwd(lambda *a: fp._Pairs.apply(*a[:3], a[4]), y, d, flag, index, cols, grad)
        errs = [rel_error(g, w) for g, w in zip(got, want, strict=True)]
        good &= report_errors(f"fields={fields} dense={dense} on={on} cols={cols}", errs,
                              1e-5)
    return good


def bench(batch: int) -> None:
    print(f"B={batch}\n| fields | dense | cols | PyTorch us | kernels us | PyTorch / kernels |\n"
          "|---:|---|---:|---:|---:|---:|")
    for fields, dense, on, cols in CASES[:4]:
        args = (*_inputs(batch, fields, dense, on, "cuda"), cols,
                torch.randn(batch, cols, device="cuda"))
        ref = graph_replay_us(lambda args=args: _fwd_bwd(fp.pairs_reference, *args))
        ours = graph_replay_us(lambda args=args: _fwd_bwd(fp.pairwise_dots, *args))
        print(f"| {fields} | {dense and ('on' if on else 'off')} | {cols} | {ref:.1f} | "
              f"{ours:.1f} | {ref / ours:.2f} |")


def main() -> None:
    kernel_check_main(__doc__, "fused_pairs", check, lambda args: bench(args.batch_size),
                      lambda parser: parser.add_argument("--batch-size", type=int, default=4096))


if __name__ == "__main__":
    main()
