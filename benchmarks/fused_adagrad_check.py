"""``ranknas.evaluator.fused_adagrad``'s kernel against its ``foreach`` reference, and
(``--bench``, CUDA) GPU time on ``nasrec_full``'s dense parameters.

    python benchmarks/fused_adagrad_check.py --bench               # on a GPU
    TRITON_INTERPRET=1 python benchmarks/fused_adagrad_check.py    # the kernel's math on CPU

Times are GPU us of one update of a parameter list, 20 of them captured in one CUDA graph and
replayed (host launch costs do not count).
"""

from __future__ import annotations

import torch
from bench_common import (
    criteo_schema,
    graph_replay_us,
    kernel_check_main,
    rel_error,
    report_errors,
)

from ranknas.evaluator import fused_adagrad as fa
from ranknas.spaces import load_space
from ranknas.supernet import Supernet

SHAPES = ((1024, 2064), (1024,), (7, 13), (4097,), (16, 64, 3), (131073,))


def _state(shapes, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
    sums = [torch.rand(s, generator=gen).to(device) for s in shapes]
    return params, grads, sums


def check(device: str) -> bool:
    good = True
    for decay in (0.0, 0.01):
        want_p, grads, want_s = _state(SHAPES, device)
        got_p, _, got_s = _state(SHAPES, device)
        for _ in range(3):  # the sums carry over
            fa.adagrad_reference(want_p, grads, want_s, 0.05, 1e-8, decay)
            for p, g, s in zip(got_p, grads, got_s, strict=True):
                fa._launch(p, g, s, 0.05, 1e-8, decay)
        errs = [rel_error(g, w) for g, w in zip(got_p + got_s, want_p + want_s, strict=True)]
        good &= report_errors(f"weight_decay={decay}, {len(errs)} tensors", errs, 1e-6)
    return good


def bench() -> None:
    supernet = Supernet(load_space("nasrec_full"), criteo_schema(), seed=0).cuda()
    cases = {f"{key} ({len(list(m.parameters()))} tensors)": list(m.parameters())
             for key, m in supernet.elastic.items()
             if key.startswith(("b3/dense:", "b3/sparse:"))}
    cases["every dense parameter"] = supernet.dense_parameters()
    print("| parameters | elements | foreach us | one pass us | foreach / one pass |\n"
          "|---|---:|---:|---:|---:|")
    for name, params in cases.items():
        params = [p.detach().clone() for p in params if p.numel()]
        grads = [torch.randn_like(p) for p in params]
        sums = [torch.rand_like(p) for p in params]
        state = (params, grads, sums, 0.01, 1e-8)
        ref = graph_replay_us(lambda state=state: fa.adagrad_reference(*state))
        ours = graph_replay_us(lambda state=state: fa.adagrad_(*state))
        n = sum(p.numel() for p in params)
        print(f"| {name} | {n:,} | {ref:.1f} | {ours:.1f} | {ref / ours:.2f} |")


def main() -> None:
    kernel_check_main(__doc__, "fused_adagrad", check, lambda args: bench())


if __name__ == "__main__":
    main()
