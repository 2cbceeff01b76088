"""Supernet training throughput against the sampled subnets alone (``nasrec_full``).

    python benchmarks/supernet_throughput.py --device cuda --batch-sizes 512 4096 --out runs/sn.json

Criteo-like data (13 dense, 26 fields with Kaggle cardinalities capped at 500k rows) made on the
device. Each supernet step trains a new uniformly sampled path (from a pre-drawn cycle of
``--paths`` architectures); Adagrad on dense parameters, sparse Adagrad on the fused table, as
NASRec. Beside it, the same architectures as standalone models: at their own widths, and with
every width decision set to its widest value. Ratios are supernet step / subnet step, paired
over the same architectures, measured in the same run. This is the eager baseline of the
sliced design; fixed-shape masked execution (for CUDA graphs) is the next step.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import Architecture, SearchSpace, build_model, load_space
from ranknas.spaces.choices import Categorical
from ranknas.supernet import Supernet

CRITEO = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)


def widest(space: SearchSpace, arch: Architecture) -> Architecture:
    """``arch`` with every active width decision at its largest option."""
    values = arch.as_dict()
    for name in values:
        choice = space.choice(name)
        if ".width" in name and isinstance(choice, Categorical):
            values[name] = max(choice.options)
    return space.canonicalize(values)


def optimizers(dense: list[nn.Parameter], sparse: list[nn.Parameter]) -> list:
    return [torch.optim.Adagrad(dense, lr=0.01), torch.optim.Adagrad(sparse, lr=0.01)]


def timed_steps(run_step, steps: int, device: torch.device) -> float:
    """Seconds per step after 3 warm-up steps."""
    for i in range(3):
        run_step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        run_step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _supernet_step_time(space: SearchSpace, schema: DataSchema, archs: list[Architecture],
                        data: tuple, steps: int, device: torch.device) -> float:
    dense, sparse, labels = data
    loss_fn = nn.BCEWithLogitsLoss()
    supernet = Supernet(space, schema, seed=0).to(device)
    opts = optimizers(supernet.dense_parameters(), supernet.sparse_parameters())

    def super_step(i: int) -> None:
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss_fn(supernet(dense, sparse, archs[i % len(archs)]), labels).backward()
        for opt in opts:
            opt.step()

    return timed_steps(super_step, steps, device)


def measure(space: SearchSpace, schema: DataSchema, archs: list[Architecture], batch: int,
            steps: int, device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    dense = torch.randn(batch, schema.num_dense, device=device, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (batch,), device=device, generator=gen)
                          for c in schema.cardinalities], dim=1)
    labels = torch.randint(0, 2, (batch,), device=device, generator=gen).float()
    loss_fn = nn.BCEWithLogitsLoss()

    t_super = _supernet_step_time(space, schema, archs, (dense, sparse, labels), steps, device)
    per_arch: dict[str, list[float]] = {"own": [], "widest": []}
    for arch in archs[: max(1, steps // 10)]:
        for kind, target in (("own", arch), ("widest", widest(space, arch))):
            model = build_model(space, target, schema).to(device)
            sub_opts = optimizers(model.dense_parameters(), model.sparse_parameters())

            def sub_step(i: int, model=model, sub_opts=sub_opts) -> None:
                for opt in sub_opts:
                    opt.zero_grad(set_to_none=True)
                loss_fn(model(dense, sparse), labels).backward()
                for opt in sub_opts:
                    opt.step()

            per_arch[kind].append(timed_steps(sub_step, 5, device))
            del model, sub_opts
    own, wide = statistics.fmean(per_arch["own"]), statistics.fmean(per_arch["widest"])
    return {"batch": batch, "supernet_ex_s": batch / t_super, "supernet_ms": t_super * 1e3,
            "subnet_own_ms": own * 1e3, "subnet_widest_ms": wide * 1e3,
            "ratio_vs_own": t_super / own, "ratio_vs_widest": t_super / wide,
            "paths": len(archs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--paths", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    space = load_space("nasrec_full")
    schema = DataSchema(13, tuple(min(c, 500_000) for c in CRITEO), "criteo-capped")
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(args.paths)]
    rows = [measure(space, schema, archs, b, args.steps, device) for b in args.batch_sizes]
    print("| B | supernet ex/s | supernet ms/step | subnet own ms | subnet widest ms | "
          "ratio own | ratio widest |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['supernet_ex_s']:,.0f} | {r['supernet_ms']:.2f} | "
              f"{r['subnet_own_ms']:.2f} | {r['subnet_widest_ms']:.2f} | "
              f"{r['ratio_vs_own']:.2f} | {r['ratio_vs_widest']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": str(device), "torch": torch.__version__,
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
