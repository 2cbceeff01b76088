"""``ranknas.supernet.fused_fm``'s kernels against the PyTorch ops they replace: forward and
gradient, and (``--bench``, CUDA) GPU time at ``nasrec_full``'s FM sizes.

    python benchmarks/fused_fm_check.py --bench               # on a GPU
    TRITON_INTERPRET=1 python benchmarks/fused_fm_check.py    # the kernels' math on CPU

Times are GPU us of one forward + backward, 20 of them captured in one CUDA graph and
replayed (host launch costs do not count). The input is a range of a wider buffer, as the
segmented step passes it.
"""

from __future__ import annotations

import torch
from bench_common import graph_replay_us, kernel_check_main, rel_error, report_errors

from ranknas.supernet import fused_fm as ff

# (batch, fields read, buffer fields, E)
CASES = ((4096, 64, 200, 16), (4096, 16, 16, 16), (37, 5, 9, 16), (300, 70, 70, 3))


def _inputs(batch: int, n: int, width: int, e: int, device: str) -> torch.Tensor:
    buf = torch.randn(batch, width, e, generator=torch.Generator().manual_seed(0))
    return buf.to(device).narrow(1, width - n, n)


def _reference(y: torch.Tensor) -> torch.Tensor:
    total = y.sum(dim=1)
    return total * total - (y * y).sum(dim=1)


def _kernels(y: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and input gradient from the kernels, launched directly (the interpreter runs
    them on CPU tensors, which the op itself sends to PyTorch)."""
    y, grid, meta = ff._launch(y)
    out = y.new_empty(y.shape[0], y.shape[2])
    total = y.new_empty(y.shape[0], y.shape[2], dtype=torch.float32)
    ff._fm_fwd[grid](y, out, total, **meta)
    dy = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    ff._fm_bwd[grid](y, total, grad.contiguous(), dy, **meta)
    return out, dy


def check(device: str) -> bool:
    good = True
    for batch, n, width, e in CASES[1:]:
        y = _inputs(batch, n, width, e, device).requires_grad_()
        grad = torch.randn(batch, e, device=device)
        want = _reference(y)
        (want_dy,) = torch.autograd.grad(want, y, grad)
        got, dy = _kernels(y.detach(), grad)
        errs = [rel_error(got, want), rel_error(dy, want_dy)]
        good &= report_errors(f"B={batch} fields {n} of {width}, E={e}", errs, 1e-5)
    return good


def bench() -> None:
    print("| B | fields (of buffer) | PyTorch ops us | one op us | PyTorch / op |\n"
          "|---:|---|---:|---:|---:|")
    for batch, n, width, e in CASES[:2]:
        y = _inputs(batch, n, width, e, "cuda").requires_grad_()
        grad = torch.randn(batch, e, device="cuda")

        def step(fn, y=y, grad=grad):
            return lambda: torch.autograd.grad(fn(y), y, grad)

        ref, ours = graph_replay_us(step(_reference)), graph_replay_us(step(ff.fm_interaction))
        print(f"| {batch} | {n} ({width}) | {ref:.1f} | {ours:.1f} | {ref / ours:.2f} |")


def main() -> None:
    kernel_check_main(__doc__, "fused_fm", check, lambda args: bench())


if __name__ == "__main__":
    main()
