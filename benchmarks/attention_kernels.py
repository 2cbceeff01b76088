"""Checks (and with ``--bench`` times) the tensor-core kernels of ``attention_tensor_core.py``
against ranknas's SIMT kernels of ``tiny_head_attention``.

    python benchmarks/attention_kernels.py --bench --sweep --no-check    # on a GPU
    TRITON_INTERPRET=1 python benchmarks/attention_kernels.py            # CPU (needs triton)

The tensor-core kernels were an experiment and are not used by ranknas: see RESULTS.md,
"Supernet step: ... tensor-core attention". On a machine without CUDA they run in Triton's
interpreter on CPU tensors.

(``TRITON_INTERPRET`` is set automatically when CUDA is missing.) On CUDA the same checks run
compiled, plus TF32 checks; ``--bench`` then times the old SIMT kernels
(``torch.ops.ranknas.tiny_head_attention[_backward]``) against ``tc_forward`` /
``tc_backward`` at B=4096, E=16, 8 heads and prints a markdown table. Exits nonzero on any
failed check.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable

import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from attention_tensor_core import PRECISIONS, tc_backward, tc_forward
from bench_common import (  # imports ranknas, so triton
    kernel_device,
    kernel_time_us,
    rel_error,
)

from ranknas.evaluator.tiny_attention import (
    _attention_reference,
    _attention_reference_backward,
)

#: max |error| / max(1, max |reference|) allowed, by (dtype, precision).
TOLERANCE = {(torch.float32, "ieee"): 1e-5, (torch.float32, "tf32x3"): 1e-4,
             (torch.float32, "tf32"): 2e-3, (torch.bfloat16, "ieee"): 2e-2,
             (torch.bfloat16, "tf32x3"): 2e-2, (torch.bfloat16, "tf32"): 2e-2}
#: backward chains more products than forward: a looser TF32 bound (printed either way)
TF32_BACKWARD_TOLERANCE = 5e-3


def _inputs(b: int, n: int, heads: int, d: int, masked: int, dtype: torch.dtype,
            device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None,
                                                 torch.Tensor]:
    """Random ``qkv [b, n, 3E]``, key bias masking the last ``masked`` keys (None for 0),
    ``grad [b, n, E]``."""
    gen = torch.Generator().manual_seed(seed)
    e = heads * d
    qkv = torch.randn(b, n, 3 * e, generator=gen).to(device=device, dtype=dtype)
    grad = torch.randn(b, n, e, generator=gen).to(device=device, dtype=dtype)
    bias = None
    if masked:
        bias = torch.zeros(n, device=device)
        bias[n - masked:] = float("-inf")
    return qkv, bias, grad


def _reference(qkv: torch.Tensor, heads: int, bias: torch.Tensor | None, grad: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 ``out, lse, dqkv`` of the PyTorch reference (on qkv's device)."""
    q64, g64 = qkv.double(), grad.double()
    out, lse = _attention_reference(q64, heads, bias)
    return out, lse, _attention_reference_backward(q64, out, g64, lse, heads, bias)


def check(device: str) -> bool:
    """Small shapes against the reference; returns whether all passed."""
    precisions = ["ieee"] if device == "cpu" else list(PRECISIONS)  # interpreter: fp32 only
    cases = [(n, 8, 2) for n in (5, 16, 33, 64)] + [(16, 4, 4), (33, 4, 4), (16, 2, 3),
                                                     (33, 2, 3)]
    if device != "cpu":
        cases.append((128, 8, 2))
    ok = True
    print("| L | heads | D | masked | dtype | precision | unroll | out | lse | dqkv | |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    for n, heads, d in cases:
        for masked in (0, 3):
            for dtype in (torch.float32, torch.bfloat16):
                qkv, bias, grad = _inputs(3, n, heads, d, masked, dtype, device)
                ref_out, ref_lse, ref_dqkv = _reference(qkv, heads, bias, grad)
                for precision, unroll in itertools.product(precisions, (None, 1)):
                    out, lse = tc_forward(qkv, heads, bias, precision, unroll=unroll)
                    # backward from the forward's own out / lse, as in training
                    dqkv = tc_backward(qkv, out, grad, lse, heads, bias, precision,
                                       unroll=unroll)
                    errs = [rel_error(*pair) for pair in
                            ((out, ref_out), (lse, ref_lse), (dqkv, ref_dqkv))]
                    tol = TOLERANCE[dtype, precision]
                    bwd_tol = (TF32_BACKWARD_TOLERANCE if (dtype, precision)
                               == (torch.float32, "tf32") else tol)
                    good = (out.dtype == dtype == dqkv.dtype and lse.dtype == torch.float32
                            and all(torch.isfinite(t).all() for t in (out, lse, dqkv))
                            and max(errs[:2]) <= tol and errs[2] <= bwd_tol)
                    ok &= good
                    print(f"| {n} | {heads} | {d} | {masked} | {str(dtype)[6:]} | {precision} "
                          f"| {unroll or heads} | {errs[0]:.1e} | {errs[1]:.1e} | {errs[2]:.1e} "
                          f"| {'ok' if good else 'FAIL'} |")
    return ok


def _kernels(qkv: torch.Tensor, bias: torch.Tensor | None, grad: torch.Tensor,
             out: torch.Tensor, lse: torch.Tensor, heads: int, sweep: bool
             ) -> dict[str, tuple[Callable, Callable, float]]:
    """name -> (forward, backward, fp32 tolerance) of the old kernels, each tc precision and,
    with ``sweep``, TF32 at other (num_warps, unroll) launch settings."""
    ops = torch.ops.ranknas
    kernels = {"old SIMT": (lambda: ops.tiny_head_attention(qkv, heads, bias),
                            lambda: ops.tiny_head_attention_backward(qkv, out, grad, lse, heads,
                                                                     bias), 1e-4)}
    for p in PRECISIONS:
        kernels[f"tc {p}"] = (lambda p=p: tc_forward(qkv, heads, bias, p),
                              lambda p=p: tc_backward(qkv, out, grad, lse, heads, bias, p),
                              2e-3 if p == "tf32" else 1e-4)
    if sweep:
        for warps, unroll in itertools.product((4, 8), (1, heads)):
            kw = {"num_warps": warps, "unroll": unroll}
            kernels[f"tc tf32 w{warps} u{unroll}"] = (
                lambda kw=kw: tc_forward(qkv, heads, bias, "tf32", **kw),
                lambda kw=kw: tc_backward(qkv, out, grad, lse, heads, bias, "tf32", **kw), 2e-3)
    return kernels


def bench(dtype: torch.dtype, sweep: bool) -> bool:
    """Times old vs tensor-core kernels at NASRec's shapes; returns whether results matched."""
    b, heads, d = 4096, 8, 2
    ok = True
    print(f"\nB={b}, E={heads * d}, heads={heads}, {str(dtype)[6:]}; us = CUDA-graph replay "
          f"(eager do_bench); err = max abs error / max(1, max |ref|) vs float64\n")
    print("| L | masked | kernel | fwd us | bwd us | out err | lse err | dqkv err | |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for n in (16, 64):
        for masked in (3,):
            qkv, bias, grad = _inputs(b, n, heads, d, masked, dtype, "cuda")
            ref_out, ref_lse, ref_dqkv = _reference(qkv, heads, bias, grad)
            # backward timed and checked from the reference's out / lse, so its error is its own
            out_in, lse_in = ref_out.to(dtype), ref_lse.float()
            kernels = _kernels(qkv, bias, grad, out_in, lse_in, heads, sweep)
            for name, (fwd, bwd, tol) in kernels.items():
                out, lse = fwd()
                dqkv = bwd()
                errs = [rel_error(*pair) for pair in
                        ((out, ref_out), (lse, ref_lse), (dqkv, ref_dqkv))]
                if dtype == torch.bfloat16:
                    tol = 2e-2
                bwd_tol = TF32_BACKWARD_TOLERANCE if tol == 2e-3 else tol
                good = max(errs[:2]) <= tol and errs[2] <= bwd_tol
                ok &= good
                (fg, fe), (bg, be) = kernel_time_us(fwd), kernel_time_us(bwd)
                print(f"| {n} | {masked} | {name} | {fg:.1f} ({fe:.1f}) | {bg:.1f} ({be:.1f}) "
                      f"| {errs[0]:.1e} | {errs[1]:.1e} | {errs[2]:.1e} "
                      f"| {'ok' if good else 'FAIL'} |", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="time at B=4096 (CUDA only)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="qkv dtype of the benchmark")
    parser.add_argument("--sweep", action="store_true",
                        help="also time TF32 at num_warps 1-8 x head-loop unroll 1, 2, heads")
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args()
    device = kernel_device()
    ok = True if args.no_check else check(device)
    if args.bench:
        if device != "cuda":
            sys.exit("--bench needs CUDA")
        ok &= bench(getattr(torch, args.dtype), args.sweep)
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
