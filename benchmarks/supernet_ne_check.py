"""Does a fast supernet trainer keep NE? Trains ``nasrec_full``'s supernet on learnable data
with each trainer variant from one seed, then scores the same architectures on each.

    python benchmarks/supernet_ne_check.py --device cuda                       # H100/H200
    python benchmarks/supernet_ne_check.py --steps 20 --batch 256 --archs 4   # CPU smoke run

Each variant (``trainer_throughput.TRAINER_VARIANTS``; ablations patch ranknas) runs in its
own process. All train on the same rows in the same order with the same paths (uniform
sampler, seed 0) on ``bench_common.teacher_data`` (Criteo-like cardinalities capped at 0.5M),
Adagrad, and then score ``--archs`` fixed random architectures on the held-out split with the
supernet's eager sliced forward, so only the training differs. It prints, per variant: the
mean train loss of the last steps, the mean held-out NE over the architectures, its mean
absolute and signed difference from the first variant's NE per architecture, and Kendall's
tau between the two rankings.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

import torch
from bench_common import criteo_schema, sync, teacher_data
from scipy.stats import kendalltau
from trainer_throughput import TRAINER_VARIANTS, ablate

from ranknas.spaces import load_space
from ranknas.supernet import Supernet, SupernetTrainConfig, SupernetTrainer, make_sampler

DEFAULT_VARIANTS = ("sliced+index+check50", "segmented+graph+check50",
                    "segmented+graph+tf32+check50+unfusedencoder", "segmented+graph+tf32+check50",
                    "segmented+graph+check50+fusedencoder")
# the fused transformer op with float32 matmuls (3xTF32 dots; off by default there)
TRAINER_VARIANTS["segmented+graph+check50+fusedencoder"] = \
    TRAINER_VARIANTS["segmented+graph+check50"]


def run_one(variant: str, args: argparse.Namespace) -> dict:
    """Train and score one variant in this process."""
    ablate(variant)
    device = torch.device(args.device)
    space = load_space("nasrec_full")
    schema = criteo_schema()
    data = teacher_data(schema, args.rows, device)
    rng = random.Random(1)
    archs = [space.sample(rng) for _ in range(args.archs)]
    torch.manual_seed(0)
    trainer = SupernetTrainer(
        Supernet(space, schema, seed=0), data, make_sampler("uniform", space, 0, schema=schema),
        SupernetTrainConfig(examples=args.steps * args.batch, batch_size=args.batch,
                            lr=args.lr, device=str(device), log_every=args.last,
                            eval_batch_size=16384, **TRAINER_VARIANTS[variant]))
    start = time.perf_counter()
    out = trainer.train()
    sync(device)
    seconds = time.perf_counter() - start
    return {"variant": variant, "loss": out["loss"], "train_s": seconds,
            "ne": [trainer.score(a)["ne"] for a in archs]}


def report(rows: list[dict]) -> None:
    """One markdown row per variant, against the first."""
    ref = rows[0]["ne"]
    print("| variant | train loss (last steps) | mean valid NE | mean abs diff vs first "
          "| mean diff | tau vs first | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        diff = [a - b for a, b in zip(r["ne"], ref, strict=True)]
        tau = kendalltau(r["ne"], ref).statistic if len(ref) > 1 else float("nan")
        print(f"| {r['variant']} | {r['loss']:.5f} | {statistics.fmean(r['ne']):.4f} "
              f"| {statistics.fmean(abs(d) for d in diff):.4f} | {statistics.fmean(diff):+.4f} "
              f"| {tau:.3f} | {r['train_s']:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated trainer variants; the first is the reference")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=2_000_000, help="teacher rows (85%% train)")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--archs", type=int, default=30, help="architectures scored")
    parser.add_argument("--last", type=int, default=100, help="steps in the train loss mean")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in TRAINER_VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {unknown}; choose from {sorted(TRAINER_VARIANTS)}")
    rows = []
    for variant in variants:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", variant]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {variant}: {rows[-1]['train_s']:.0f} s", file=sys.stderr, flush=True)
    report(rows)


if __name__ == "__main__":
    main()
