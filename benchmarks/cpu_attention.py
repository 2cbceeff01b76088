"""CPU self-attention: ``nn.MultiheadAttention``'s forward against
``ranknas.spaces.ops.sparse.self_attention`` (SDPA on ``[B, H, L, d]`` views), forward +
backward, on NASRec's shapes (E = 16, 8 heads of dimension 2).

    OMP_NUM_THREADS=1 python benchmarks/cpu_attention.py

Each row: the mean of ``--reps`` forward + backward passes per side, the two sides
alternating ``--rounds`` times (the best round kept), and the largest output and gradient
differences between them.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from ranknas.spaces.ops.sparse import self_attention


def _time(fn, grad: torch.Tensor, leaves: list[torch.Tensor], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        torch.autograd.grad(fn(), leaves, grad)
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"B={args.batch_size}, E=16, 8 heads, {torch.get_num_threads()} thread(s)\n"
          "| tokens | module ms | self_attention ms | module / self_attention | max out diff "
          "| max grad diff |\n|---:|---:|---:|---:|---:|---:|")
    for n in args.tokens:
        _row(n, args)


def _row(n: int, args: argparse.Namespace) -> None:
    attn = nn.MultiheadAttention(16, 8, batch_first=True)
    z = torch.randn(args.batch_size, n, 16, requires_grad=True)
    leaves = [z, *attn.parameters()]
    sides = {"module": lambda: attn(z, z, z, need_weights=False)[0],
             "self_attention": lambda: self_attention(attn, z)}
    grad = torch.randn(args.batch_size, n, 16)
    out_diff = (sides["module"]() - sides["self_attention"]()).abs().max().item()
    grad_diff = max((a - b).abs().max().item() for a, b in zip(
        *(torch.autograd.grad(fn(), leaves, grad) for fn in sides.values()), strict=True))
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(args.rounds):
        for name, fn in sides.items():
            best[name] = min(best[name], _time(fn, grad, leaves, args.reps))
    print(f"| {n} | {best['module']:.1f} | {best['self_attention']:.1f} | "
          f"{best['module'] / best['self_attention']:.2f} | {out_diff:.1e} | {grad_diff:.1e} |")

if __name__ == "__main__":
    main()
