"""Supernet training throughput against the sampled subnets alone (``nasrec_full``).

    python benchmarks/supernet_throughput.py --device cuda --batch-sizes 512 4096 --out runs/sn.json
    python benchmarks/supernet_throughput.py --device cuda --masked eager compile+graph+tf32
    python benchmarks/supernet_throughput.py --device cuda --batch-sizes 4096 --no-sliced \
        --trainer segmented+graph+tf32+check50     # one trainer variant per process on a GPU

Two designs, timed in the same run: the *sliced* supernet (``Supernet.forward``: each path at
its own shapes, eager) and the *masked* fixed-shape execution (:class:`MaskedStep`: every path
the same kernels, so one compiled graph and one CUDA graph serve all paths) in the variants
given by ``--masked``. Masked rows report throughput with paths encoded beforehand and with a
new path encoded on the host every step (the real cost of training), the encode time per path,
and the step's FLOPs/bytes floor on the card's measured ceilings.

Criteo-like data (13 dense, 26 fields with Kaggle cardinalities capped at 500k rows) made on the
device. Each supernet step trains a new uniformly sampled path (from a pre-drawn cycle of
``--paths`` architectures); Adagrad on dense parameters, sparse Adagrad on the fused table, as
NASRec. Beside it, the same architectures as standalone models: at their own widths, and with
every width decision set to its widest value. Ratios are supernet step / subnet step, paired
over the same architectures, measured in the same run.

``--trainer`` times ``SupernetTrainer`` end to end (a new path every step) in the given
variants, ``segmented`` among them (only the path's ops, one CUDA graph per segment: it warms
up for 1000 steps so that every segment is captured before timing, and reports how many were
captured while timed). Its steps are timed in ``--chunks`` chunks and the median chunk without
a capture is reported, so one late capture or host stall does not skew the figure.
``--subnets K`` puts the issue's step ratio beside each trainer row: K sampled architectures as
standalone models (own and widest widths) with the same GPU tricks (CUDA graph, TF32, fused
attention, index embedding update), the mean step of each against the trainer's. Captured
graphs keep their memory for the life of the process, so on a GPU run one trainer variant per
process.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from bench_common import ceilings, criteo_schema, sync, widest
from step_cost import forward_cost, step_floor
from torch import nn
from trainer_throughput import (
    TRAINER_VARIANTS,
    measure_subnets,
    measure_trainer,
    print_trainer_rows,
)

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import Architecture, SearchSpace, build_model, load_space
from ranknas.supernet import Supernet


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


MASKED_VARIANTS = {
    "eager": {},
    "compile": {"compile": True},
    "compile+graph": {"compile": True, "cuda_graph": True},
    "compile+graph+tf32": {"compile": True, "cuda_graph": True, "precision": "tf32"},
    "compile+graph+bf16": {"compile": True, "cuda_graph": True, "precision": "bf16"},
}


def make_batch(schema: DataSchema, batch: int, device: torch.device) -> tuple:
    gen = torch.Generator(device=device).manual_seed(0)
    dense = torch.randn(batch, schema.num_dense, device=device, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (batch,), device=device, generator=gen)
                          for c in schema.cardinalities], dim=1)
    labels = torch.randint(0, 2, (batch,), device=device, generator=gen).float()
    return dense, sparse, labels


def masked_cost(space: SearchSpace, schema: DataSchema, arch: Architecture,
                device: torch.device) -> dict:
    """Forward FLOPs and activation bytes per example of the masked execution (any path;
    :func:`step_cost.forward_cost`)."""
    from ranknas.supernet.masked import encode, masked_forward

    b = 64
    supernet = Supernet(space, schema, seed=0).to(device)
    dense, sparse, _ = make_batch(schema, b, device)
    path = encode(supernet, arch)
    cost = forward_cost(lambda: masked_forward(supernet, dense, sparse, path), b)
    return {**cost, "dense_params": sum(p.numel() for p in supernet.dense_parameters())}


def masked_floor(cost: dict, schema: DataSchema, batch: int, ceil: dict) -> dict:
    """The masked step's FLOPs/bytes floor (:func:`step_cost.step_floor`)."""
    return step_floor(cost, schema, batch, cost["dense_params"], ceil)


def measure_masked(space: SearchSpace, schema: DataSchema, archs: list[Architecture],
                   fresh: list[Architecture], batch: int, steps: int, device: torch.device,
                   variant: str) -> dict:
    """Masked step time with paths encoded beforehand, and with a new path every step."""
    from ranknas.supernet import MaskedStep
    from ranknas.supernet.masked import encode

    dense, sparse, labels = make_batch(schema, batch, device)
    supernet = Supernet(space, schema, seed=0).to(device)
    step = MaskedStep(supernet, lr=0.01, **MASKED_VARIANTS[variant])
    paths = [encode(supernet, a) for a in archs]
    start = time.perf_counter()
    for i in range(6):  # compile, CUDA-graph warm-up and capture
        step(dense, sparse, labels, paths[i % len(paths)])
    sync(device)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(steps):
        step(dense, sparse, labels, paths[i % len(paths)])
    sync(device)
    cached = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for arch in fresh[:steps]:
        encode(supernet, arch)
    encode_s = (time.perf_counter() - start) / min(steps, len(fresh))
    extra = fresh[steps:2 * steps]
    start = time.perf_counter()
    for arch in extra:
        step(dense, sparse, labels, arch)
    loss = float(step(dense, sparse, labels, paths[0]))
    sync(device)
    live = (time.perf_counter() - start) / (len(extra) + 1)
    return {"batch": batch, "variant": variant, "setup_s": setup, "ms": cached * 1e3,
            "ex_s": batch / cached, "encode_ms": encode_s * 1e3, "live_ms": live * 1e3,
            "live_ex_s": batch / live, "loss": loss}


def measure(space: SearchSpace, schema: DataSchema, archs: list[Architecture], batch: int,
            steps: int, device: torch.device) -> dict:
    dense, sparse, labels = make_batch(schema, batch, device)
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
    parser.add_argument("--masked", nargs="*", default=[], choices=list(MASKED_VARIANTS),
                        help="masked-execution variants to time beside the sliced design")
    parser.add_argument("--trainer", nargs="*", default=[], choices=list(TRAINER_VARIANTS),
                        help="SupernetTrainer variants to time end to end (new path each step)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="trainer warm-up steps (default: 8; segmented: 1000)")
    parser.add_argument("--chunks", type=int, default=5,
                        help="trainer: time the steps in this many chunks and report the "
                             "median chunk without a capture")
    parser.add_argument("--subnets", type=int, default=0,
                        help="trainer rows: also time this many of the paths as standalone "
                             "models (own and widest widths) and report the step ratios")
    parser.add_argument("--no-sliced", action="store_true",
                        help="skip the sliced step vs subnet comparison")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    space = load_space("nasrec_full")
    schema = criteo_schema()
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(args.paths)]
    fresh = [space.sample(rng) for _ in range(2 * args.steps)]
    result: dict = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    if args.masked:

        ceil = ceilings(device)
        cost = masked_cost(space, schema, archs[0], device)
        result.update(ceilings=ceil, masked_cost=cost)
        result["masked"] = []
        for b in args.batch_sizes:
            floor = masked_floor(cost, schema, b, ceil)
            for variant in args.masked:
                row = {**measure_masked(space, schema, archs, fresh, b, args.steps, device,
                                        variant), **floor}
                result["masked"].append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"masked forward: {cost['fwd_flops_per_example'] / 1e6:.1f} MFLOP, "
              f"{cost['fwd_activation_bytes_per_example'] / 1e6:.2f} MB (eager) / "
              f"{cost['fwd_fused_activation_bytes_per_example'] / 1e6:.2f} MB (fused) per example")
        print("| B | variant | ex/s (pre-encoded) | ms/step | ex/s (new path each step) | "
              "encode ms/path | floor ms fp32/tf32/bf16 | set-up s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in result["masked"]:
            fl = "/".join(f"{r.get(f'floor_{p}_ms', float('nan')):.2f}"
                          for p in ("fp32", "tf32", "bf16"))
            print(f"| {r['batch']} | {r['variant']} | {r['ex_s']:,.0f} | {r['ms']:.2f} | "
                  f"{r['live_ex_s']:,.0f} | {r['encode_ms']:.2f} | {fl} | {r['setup_s']:.0f} |")
    if args.trainer:
        result["trainer"] = []
        subnets: dict[int, dict] = {}
        for b in args.batch_sizes:
            for variant in args.trainer:
                row = measure_trainer(space, schema, b, args.steps, device, variant,
                                      args.warmup, args.chunks)
                if args.subnets:
                    sub = subnets.get(b) or subnets.setdefault(b, measure_subnets(
                        space, schema, archs[:args.subnets], b, args.steps, device))
                    row.update(sub, ratio_vs_own=row["ms"] / sub["subnet_own_ms"],
                               ratio_vs_widest=row["ms"] / sub["subnet_widest_ms"])
                result["trainer"].append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(result, indent=1))
        print_trainer_rows(result["trainer"])
    rows = [] if args.no_sliced else [measure(space, schema, archs, b, args.steps, device)
                                      for b in args.batch_sizes]
    result["rows"] = rows
    print("| B | supernet ex/s | supernet ms/step | subnet own ms | subnet widest ms | "
          "ratio own | ratio widest |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['supernet_ex_s']:,.0f} | {r['supernet_ms']:.2f} | "
              f"{r['subnet_own_ms']:.2f} | {r['subnet_widest_ms']:.2f} | "
              f"{r['ratio_vs_own']:.2f} | {r['ratio_vs_widest']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
