"""Checks (and with ``--bench`` times) the Triton encoder-layer kernels of
``ranknas.supernet.encoder_kernels`` against ``ranknas.supernet.fused_encoder``'s reference.

    TRITON_INTERPRET=1 python benchmarks/encoder_kernels_check.py          # CPU (needs triton)
    python benchmarks/encoder_kernels_check.py --bench --no-check          # on a GPU
    python benchmarks/encoder_kernels_check.py --bench --sweep --no-check  # + launch settings

Without CUDA, Triton's interpreter runs the kernels on CPU tensors (``TRITON_INTERPRET`` is set
automatically there); it ignores ``tl.dot``'s input precision (numpy float32), so only
``ieee`` is checked. On CUDA the same small shapes run compiled in every precision.
``--bench`` times, at B=4096 (``--batch``), E=16, 8 heads, L in {16, 64}, the fused kernels
against the layer as the masked transformer runs it without them (cuBLAS projections,
ranknas's attention and LayerNorm kernels) under autograd, checks the GPU results
against a float64 reference and prints a markdown table. Errors are max |error| / max(1, max |ref|)
against ``encoder_reference`` / ``encoder_reference_backward`` in float64 from the same inputs;
the kernel's backward runs from its own forward's ``att`` and ``lse``, as in training. Exits
nonzero on any failed check.
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

import torch.nn.functional as F
from bench_common import (  # imports ranknas, so triton
    kernel_device,
    kernel_time_us,
    rel_error,
)

from ranknas.evaluator.tiny_attention import tiny_head_attention
from ranknas.supernet.encoder_kernels import PRECISIONS, encoder_backward, encoder_forward
from ranknas.supernet.fused_encoder import (
    ENCODER_WEIGHTS,
    encoder_reference,
    encoder_reference_backward,
    split_grads,
)
from ranknas.supernet.masked_base import layer_norm

#: max relative error allowed, by (z dtype, precision). TF32 rounding of a 16-wide layer is
#: amplified by two LayerNorm backwards: the PyTorch ops under TF32 reach dz errors of 2e-1
#: at B=4096 (benchmarks/RESULTS.md), so TF32 is held to that order, not to float32's.
TOLERANCE = {"ieee": 1e-4, "tf32x3": 1e-4, "tf32": 3e-1}
BF16_TOLERANCE = 3e-2
NAMES = ("out", "att", "lse", "dz", *(w.replace("attn.", "") for w in ENCODER_WEIGHTS))


def _inputs(b: int, n: int, e: int, masked: int, dtype: torch.dtype, device: str,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                    list[torch.Tensor], torch.Tensor]:
    """``(z, key_bias, row_mask, weights, grad)``: random tokens and weights (~0.3, the
    LayerNorms' around 1), the last ``masked`` tokens padded (key bias -inf, row mask 0)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3, shift: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device)

    z = rand(b, n, e, scale=1.0).to(dtype)
    weights = [rand(3 * e, e), rand(3 * e), rand(e, e), rand(e), rand(e, scale=0.1, shift=1.0),
               rand(e, scale=0.1), rand(e, e), rand(e), rand(e, e), rand(e),
               rand(e, scale=0.1, shift=1.0), rand(e, scale=0.1)]
    grad = rand(b, n, e, scale=1.0).to(dtype)
    key_bias = torch.zeros(n, device=device)
    row_mask = torch.ones(n, device=device)
    if masked:
        key_bias[n - masked:] = float("-inf")
        row_mask[n - masked:] = 0.0
    return z, key_bias, row_mask, weights, grad


def _reference_backward(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
                        weights: list[torch.Tensor], grad: torch.Tensor, heads: int,
                        att: torch.Tensor, lse: torch.Tensor) -> list[torch.Tensor]:
    """float64 ``[dz, *weight grads]`` of the PyTorch reference from ``att`` and ``lse``."""
    dz, grads = encoder_reference_backward(grad.double(), z.double(), key_bias, row_mask,
                                           [w.double() for w in weights], heads, att.double(),
                                           lse.double())
    return [dz, *grads]


def _reference(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
               weights: list[torch.Tensor], grad: torch.Tensor, heads: int
               ) -> list[torch.Tensor]:
    """float64 ``[out, att, lse, dz, *weight grads]`` of the PyTorch reference."""
    out, att, lse = encoder_reference(z.double(), key_bias, row_mask,
                                      [w.double() for w in weights], heads)
    return [out, att, lse, *_reference_backward(z, key_bias, row_mask, weights, grad, heads,
                                                att, lse)]


def _fused(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
           weights: list[torch.Tensor], grad: torch.Tensor, heads: int, precision: str,
           **kw: int) -> list[torch.Tensor]:
    """``[out, att, lse, dz, *weight grads]`` of the kernels (backward from their forward)."""
    out, att, lse = encoder_forward(z, key_bias, row_mask, weights, heads, precision, **kw)
    dz, flat = encoder_backward(grad, z, key_bias, row_mask, weights, heads, att, lse,
                                precision, **kw)
    return [out, att, lse, dz, *split_grads(flat, weights)]


def _compare(got: list[torch.Tensor], ref: list[torch.Tensor], z: torch.Tensor,
             weights: list[torch.Tensor], tol: float) -> tuple[list[float], bool]:
    """Per-tensor errors, and whether all are finite, typed, shaped and within ``tol``."""
    errs = [rel_error(g, r) for g, r in zip(got, ref, strict=True)]
    typed = ([g.dtype for g in got[:4]] == [z.dtype, z.dtype, torch.float32, z.dtype]
             and all(g.dtype == w.dtype and g.shape == w.shape
                     for g, w in zip(got[4:], weights, strict=True)))
    finite = all(torch.isfinite(g).all() for g in got)
    return errs, typed and finite and max(errs) <= tol


def check(device: str) -> bool:
    """Small shapes against the float64 reference; prints max errors, returns whether all
    passed."""
    precisions = ["ieee"] if device == "cpu" else list(PRECISIONS)
    configs = [(16, 8), (8, 4), (12, 4)]  # (E, heads): head dims 2, 2, 3
    cases = [(b, n, e, h, m, torch.float32, False) for (e, h), b, n, m in
             itertools.product(configs, (1, 5), (5, 16, 33, 64), (0, 3))]
    cases += [(5, n, 16, 8, 3, torch.bfloat16, False) for n in (16, 33)]
    # views, as the segmented step passes them: z a transposed layout, grad a buffer's range
    cases += [(5, n, 16, 8, 3, torch.float32, True) for n in (16, 33)]
    worst = [0.0] * len(NAMES)
    ok = True
    print("| B | L | E | heads | masked | dtype | precision | out | att | lse | dz | dweights "
          "| |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for b, n, e, heads, masked, dtype, views in cases:
        z, key_bias, row_mask, weights, grad = _inputs(b, n, e, masked, dtype, device)
        ref = _reference(z, key_bias, row_mask, weights, grad, heads)
        if views:
            z = z.transpose(1, 2).contiguous().transpose(1, 2)
            grad = torch.cat([grad.new_zeros(b, 2, e), grad, grad.new_zeros(b, 5, e)],
                             1).narrow(1, 2, n)
        for precision in precisions:
            # B=5 on 2 programs: a program loops over 3 examples, partial rows are summed
            got = _fused(z, key_bias, row_mask, weights, grad, heads, precision,
                         programs=2 if b > 2 else None)
            tol = TOLERANCE[precision]
            if dtype == torch.bfloat16:
                # the backward's reference from the kernel's own (bf16) att and lse: the
                # rounded att moves pre-activations by ~1e-3, enough to flip a ReLU at its
                # kink, which changes that row's gradient by O(1)
                tol = BF16_TOLERANCE
                ref = ref[:3] + _reference_backward(z, key_bias, row_mask, weights, grad, heads,
                                                    got[1], got[2])
            errs, good = _compare(got, ref, z, weights, tol)
            if dtype == torch.float32:
                worst = [max(w, x) for w, x in zip(worst, errs, strict=True)]
            ok &= good
            print(f"| {b} | {n} | {e} | {heads} | {masked} | {str(dtype)[6:]}"
                  f"{' views' if views else ''} | {precision} | "
                  + " | ".join(f"{x:.1e}" for x in errs[:4])
                  + f" | {max(errs[4:]):.1e} | {'ok' if good else 'FAIL'} |", flush=True)
    print("\nmax error per tensor over the float32 cases:")
    for name, err in zip(NAMES, worst, strict=True):
        print(f"  {name:>18}: {err:.2e}")
    return ok


def _unfused(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
             weights: list[torch.Tensor], heads: int) -> torch.Tensor:
    """The layer as the masked transformer runs it without the fused op: cuBLAS projections,
    ranknas's attention kernel and fused LayerNorm."""
    in_w, in_b, out_w, out_b, n1_w, n1_b, f1_w, f1_b, f2_w, f2_b, n2_w, n2_b = weights
    att = tiny_head_attention(F.linear(z, in_w, in_b), heads, key_bias)[0]
    y1 = layer_norm(z + F.linear(att, out_w, out_b), n1_w, n1_b)
    v2 = y1 + F.linear(torch.relu(F.linear(y1, f1_w, f1_b)), f2_w, f2_b)
    return layer_norm(v2, n2_w, n2_b) * row_mask[:, None]


def _torch_steps(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
                 weights: list[torch.Tensor], grad: torch.Tensor, heads: int
                 ) -> tuple[Callable, Callable]:
    """(forward, forward + backward) of the unfused layer under autograd."""
    leaves = [t.detach().requires_grad_() for t in (z, *weights)]

    def fwd() -> torch.Tensor:
        return _unfused(leaves[0], key_bias, row_mask, leaves[1:], heads)

    def step() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(fwd(), leaves, grad)

    return fwd, step


def _fused_steps(z: torch.Tensor, key_bias: torch.Tensor, row_mask: torch.Tensor,
                 weights: list[torch.Tensor], grad: torch.Tensor, heads: int, precision: str,
                 fwd_kw: dict, bwd_kw: dict) -> tuple[Callable, Callable]:
    """(forward, forward + backward) of the kernels."""

    def fwd() -> tuple[torch.Tensor, ...]:
        return encoder_forward(z, key_bias, row_mask, weights, heads, precision, **fwd_kw)

    def step() -> list[torch.Tensor]:
        _, att, lse = fwd()
        return encoder_backward(grad, z, key_bias, row_mask, weights, heads, att, lse,
                                precision, **bwd_kw)

    return fwd, step


def bench(sweep: bool, b: int = 4096) -> bool:
    """Times fused vs PyTorch at NASRec's shapes; returns whether the GPU results matched."""
    e, heads, masked = 16, 8, 3
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    ok = True
    print(f"\nB={b}, E={e}, heads={heads}, last {masked} tokens masked, float32; us = CUDA-graph "
          f"replay (eager do_bench); errors: max |error| / max(1, max |ref|) vs float64, the "
          f"forward's over out, att and lse, dweight's over the 12 weight gradients\n")
    print("| L | variant | fwd us | fwd+bwd us | fwd err | dz err | dweight err | |\n"
          "|---|---|---|---|---|---|---|---|")
    for n in (16, 64):
        z, key_bias, row_mask, weights, grad = _inputs(b, n, e, masked, torch.float32, "cuda")
        ref = _reference(z, key_bias, row_mask, weights, grad, heads)
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            fwd, step = _torch_steps(z, key_bias, row_mask, weights, grad, heads)
            # the same errors as the fused rows', out only (no att / lse), for a like baseline
            dz, *dweights = step()
            errs = (rel_error(fwd(), ref[0]), rel_error(dz, ref[3]),
                    max(rel_error(g, r) for g, r in zip(dweights, ref[4:], strict=True)))
            (fg, fe), (sg, se) = kernel_time_us(fwd), kernel_time_us(step)
            print(f"| {n} | unfused ops {'tf32' if tf32 else 'fp32'} | {fg:.1f} ({fe:.1f}) "
                  f"| {sg:.1f} ({se:.1f}) | " + " | ".join(f"{x:.1e}" for x in errs) + " | |",
                  flush=True)
        torch.backends.cuda.matmul.allow_tf32 = False
        variants = [(p, {}) for p in PRECISIONS]
        if sweep:
            for warps, unroll, fwd_p, bwd_p in itertools.product(
                    (4, 8), (1, heads), (2 * sms, 8 * sms, b), (2 * sms, 4 * sms, 8 * sms)):
                variants.append(("tf32", {"num_warps": warps, "unroll": unroll,
                                          "programs": (fwd_p, bwd_p)}))
        for precision, kw in variants:
            fwd_kw, bwd_kw = dict(kw), dict(kw)
            if "programs" in kw:
                fwd_kw["programs"], bwd_kw["programs"] = kw["programs"]
            fwd, step = _fused_steps(z, key_bias, row_mask, weights, grad, heads, precision,
                                     fwd_kw, bwd_kw)
            out, att, lse = fwd()
            dz, flat = step()
            got = [out, att, lse, dz, *split_grads(flat, weights)]
            errs, good = _compare(got, ref, z, weights, TOLERANCE[precision])
            ok &= good
            (fg, fe), (sg, se) = kernel_time_us(fwd), kernel_time_us(step)
            label = f"fused {precision}" + "".join(f" {k}={v}" for k, v in kw.items())
            print(f"| {n} | {label} | {fg:.1f} ({fe:.1f}) | {sg:.1f} ({se:.1f}) "
                  f"| {max(errs[:3]):.1e} | {errs[3]:.1e} | {max(errs[4:]):.1e} "
                  f"| {'ok' if good else 'FAIL'} |",
                  flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="time at B=4096 (CUDA only)")
    parser.add_argument("--sweep", action="store_true",
                        help="with --bench: also time TF32 over warps, head unroll, programs")
    parser.add_argument("--batch", type=int, default=4096, help="B of the benchmark")
    parser.add_argument("--no-check", action="store_true", help="skip the small-shape check")
    args = parser.parse_args()
    device = kernel_device()
    ok = True if args.no_check else check(device)
    if args.bench:
        if device != "cuda":
            sys.exit("--bench needs CUDA (and TRITON_INTERPRET unset)")
        ok &= bench(args.sweep, args.batch)
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
