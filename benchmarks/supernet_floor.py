"""The FLOPs/bytes floor of a supernet step, per execution, over sampled paths.

    python benchmarks/supernet_floor.py --paths 20 --batch 4096            # H200 ceilings
    python benchmarks/supernet_floor.py --device cuda                      # measured ceilings

For ``--paths`` uniformly sampled ``nasrec_full`` paths (Criteo-like schema), counts what one
forward pass must compute and move per example (:mod:`step_cost`) in each execution:

- ``sliced``: the path at its own widths (what the sampled subnet alone costs);
- ``segmented``: the path's ops at the fixed widest shapes (masks, padded inputs);
- ``masked``: every candidate op of every block at its widest (path-independent).

and turns it into the step's floor at batch ``--batch`` (fwd + bwd ~ 3x forward) on the
card's ceilings: measured with ``--device cuda``, else the H200's measured in
``RESULTS.md`` (copy 4.24 TB/s; matmul 51 / 421 / 796 TFLOP/s fp32 / TF32 / bf16). The
issue's 690k examples/s at B=4096 is a 5.94 ms step. It also splits the segmented
execution's bytes by the op of the segment that writes them, and by ATen op, and counts two
segmented training steps whole (forward, backward, update; same paths): autograd over the
segments, which concatenates every port's candidates before gathering, and
:class:`~ranknas.supernet.segmented_step.SegmentedStep`, which gathers from fixed buffers.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import ceilings, criteo_schema
from step_cost import (
    forward_cost,
    fused_bytes_by,
    step_floor,
    train_step_cost,
    train_step_floor,
)

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import load_space
from ranknas.supernet import Supernet, make_sampler
from ranknas.supernet.masked import encode, masked_forward
from ranknas.supernet.segmented import _Segment, segmented, segmented_forward
from ranknas.supernet.segmented_step import SegmentedStep

#: The H200 of RESULTS.md's standalone section (2026-11-27), for floors computed off the GPU.
H200 = {"copy_bytes_per_s": 4.24e12, "matmul_fp32_flop_per_s": 51e12,
        "matmul_tf32_flop_per_s": 421e12, "matmul_bf16_flop_per_s": 796e12}
COUNT = 64  # examples per counted forward


def _segment_op(module: torch.nn.Module) -> str | None:
    if not isinstance(module, _Segment):
        return None
    return "head" if module.layer is None else module.layer.op.op_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--space", default="nasrec_full")
    parser.add_argument("--paths", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    space, schema = load_space(args.space), criteo_schema()
    supernet = Supernet(space, schema, seed=0).to(device)
    sampler = make_sampler("uniform", space, args.seed, schema=schema)
    gen = torch.Generator(device=device).manual_seed(0)
    dense = torch.randn(COUNT, schema.num_dense, device=device, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (COUNT,), device=device, generator=gen)
                          for c in schema.cardinalities], dim=1)
    ceil = ceilings(device) or H200
    dense_params = sum(p.numel() for p in supernet.dense_parameters())
    runs = {"sliced": lambda a: supernet(dense, sparse, a),
            "segmented": lambda a: segmented_forward(supernet, dense, sparse, a)}
    rows: dict[str, list[dict]] = {name: [] for name in runs}
    archs = [sampler.sample(i) for i in range(args.paths)]
    for arch in archs:
        for name, run in runs.items():
            cost = forward_cost(lambda run=run, arch=arch: run(arch), COUNT)
            rows[name].append({**cost, **step_floor(cost, schema, args.batch, dense_params,
                                                    ceil)})
    by_op: dict[str, float] = {}  # which segments write the segmented step's bytes
    by_aten: dict[str, float] = {}  # and with which ATen ops
    for arch in archs:
        splits = fused_bytes_by(lambda arch=arch: segmented_forward(supernet, dense, sparse,
                                                                    arch), COUNT, _segment_op)
        for total, split in zip((by_op, by_aten), splits, strict=True):
            for op, size in split.items():
                total[op] = total.get(op, 0.0) + size / len(archs)
    path = encode(supernet, archs[0])
    cost = forward_cost(lambda: masked_forward(supernet, dense, sparse, path), COUNT)
    rows["masked"] = [{**cost, **step_floor(cost, schema, args.batch, dense_params, ceil)}]
    result = {"space": args.space, "paths": args.paths, "batch": args.batch,
              "ceilings": ceil, "measured_ceilings": ceil is not H200, "summary": {}}
    print(f"| execution | fwd MFLOP / example | fused MB / example | floor ms TF32 | "
          f"floor ex/s TF32 | (B={args.batch}, mean over {args.paths} paths) |")
    print("|---|---|---|---|---|---|")
    for name, rs in rows.items():
        mean = {k: statistics.fmean(r[k] for r in rs) for k in rs[0]}
        result["summary"][name] = mean
        print(f"| {name} | {mean['fwd_flops_per_example'] / 1e6:.2f} | "
              f"{mean['fwd_fused_activation_bytes_per_example'] / 1e6:.3f} | "
              f"{mean['floor_tf32_ms']:.2f} | {args.batch / mean['floor_tf32_ms'] * 1e3:,.0f} | |")
    result["segmented_fused_bytes_by_op"] = by_op
    result["segmented_fused_bytes_by_aten_op"] = by_aten
    for title, split in (("op of the segment", by_op), ("ATen op", by_aten)):
        print(f"\n| segmented: {title} | fused MB / example | share |\n|---|---|---|")
        total = sum(split.values())
        for op, size in sorted(split.items(), key=lambda kv: -kv[1])[:12]:
            print(f"| {op or '(between segments)'} | {size / 1e6:.3f} | {size / total:.0%} |")
    result["steps"] = _whole_steps(supernet, archs, dense, sparse, args.batch, dense_params,
                                   ceil, schema)
    result["rows"] = rows
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


def _whole_steps(supernet: Supernet, archs: list, dense: torch.Tensor, sparse: torch.Tensor,
                 batch: int, dense_params: int, ceil: dict,
                 schema: DataSchema) -> dict[str, dict]:
    """The two segmented training steps counted whole, mean over ``archs``."""
    labels = (torch.arange(COUNT, device=dense.device) % 2).float()
    prog = segmented(supernet)
    runner = SegmentedStep(supernet, update=lambda params, grads: None)  # weights stay put

    def autograd_step(path):
        emb = supernet.embedding(sparse).detach().requires_grad_()
        logits = prog.forward_embedded(supernet, dense, emb, path)
        F.binary_cross_entropy_with_logits(logits, labels).backward()

    steps = {"autograd over segments (concatenated candidates)": autograd_step,
             "SegmentedStep (gathers from fixed buffers)":
                 lambda path: runner(dense, supernet.embedding(sparse).detach(), labels, path)}
    out = {}
    print("\n| segmented step, counted whole | MFLOP / example | fused MB / example | "
          "floor ms TF32 | floor ex/s TF32 |\n|---|---|---|---|---|")
    for name, step in steps.items():
        costs = []
        for arch in archs:
            path = encode(supernet, arch)
            cost = train_step_cost(lambda step=step, path=path: step(path), COUNT)
            costs.append({**cost, **train_step_floor(cost, schema, batch,
                                                     dense_params, ceil)})
        mean = out[name] = {k: statistics.fmean(c[k] for c in costs) for k in costs[0]}
        print(f"| {name} | {mean['step_flops_per_example'] / 1e6:.1f} | "
              f"{mean['step_fused_bytes_per_example'] / 1e6:.2f} | "
              f"{mean['floor_tf32_ms']:.2f} | {batch / mean['floor_tf32_ms'] * 1e3:,.0f} |")
    return out


if __name__ == "__main__":
    main()
