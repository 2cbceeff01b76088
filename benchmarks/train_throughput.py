#!/usr/bin/env python
"""Standalone training throughput of NASRec's Criteo-Full best architecture (examples/s).

Trains the model with :func:`ranknas.evaluator.training.train` (Adagrad, as NASRec) on random
data generated on the device, with Criteo Kaggle's per-field cardinalities capped at 0.5M rows,
once per variant (eager baseline, ``TrainConfig`` fast options) and batch size. Throughput is
steady state: ``train`` reports progress every ``--chunk`` steps (each report syncs the device);
the first ``--warmup-chunks`` chunks (compilation, CUDA-graph capture) are left out.

Also measures the device's ceilings (copy bandwidth, matmul rates), counts the floor of one
step (FLOPs and bytes) and compares NE / train loss of fp32 and bf16 on learnable synthetic data.

    python benchmarks/train_throughput.py --out runs/throughput.json            # CPU, few steps
    python benchmarks/train_throughput.py --device cuda --out $OUT/tp.json     # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import (
    ceilings,
    criteo_schema,
    cuda_time,
    environment,
    random_data,
    teacher_data,
)

from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.schema import Batch, DataSchema
from ranknas.evaluator.training import TrainConfig, evaluate, train
from ranknas.spaces import build_model, load_space
from ranknas.spaces.nasrec_json import from_nasrec_json

#: NASRec's own code training this architecture on one H200 (examples/s).
NASREC_REFERENCE = {512: 21_000, 4096: 114_000}
TARGET = 1_000_000  # examples/s at B=4096 on one H100/H200
#: NASRec's published Criteo-Full best architecture, from the team's shared/ folder beside the
#: checkout; on a machine without it (the GPU box), copy the file over and pass --arch.
ARCH_JSON = (Path(__file__).resolve().parents[2] / "shared" / "nasrec-configs"
             / "criteo_full_best.json")

_INDEX = {"embedding_update": "index"}
_GRAPH = {"embedding_update": "index", "cuda_graph": True}
_FA = {"fused_attention": True}
#: name -> TrainConfig options.
VARIANTS: dict[str, dict] = {
    "eager": {},
    "eager+tf32": {"precision": "tf32"},
    "eager+bf16": {"precision": "bf16"},
    "index": dict(_INDEX),
    "graph": dict(_GRAPH),
    "graph+fa": {**_GRAPH, **_FA},
    "compile": {"compile": True},
    "compile+fa": {"compile": True, **_FA},
    "compile+index": {"compile": True, **_INDEX},
    "compile+index+bf16": {"compile": True, "precision": "bf16", **_INDEX},
    "compile+graph": {"compile": True, **_GRAPH},
    "compile+graph+tf32": {"compile": True, "precision": "tf32", **_GRAPH},
    "compile+graph+bf16": {"compile": True, "precision": "bf16", **_GRAPH},
    "compile+graph+fa": {"compile": True, **_GRAPH, **_FA},
    "compile+graph+tf32+fa": {"compile": True, "precision": "tf32", **_GRAPH, **_FA},
    "compile+graph+bf16+fa": {"compile": True, "precision": "bf16", **_GRAPH, **_FA},
}
#: Run in this order (most telling first).
GPU_VARIANTS = ("eager", "compile+graph+tf32+fa", "compile+graph+fa", "compile+graph+bf16+fa",
                "compile+graph+tf32", "graph+fa", "compile+fa")
CPU_VARIANTS = ("eager", "index", "compile+index", "compile+index+bf16")
GPU_NE_VARIANTS = ("eager", "compile+graph+fa", "compile+graph+tf32+fa",
                   "compile+graph+bf16+fa")
PROFILE_VARIANTS = ("compile+graph+tf32+fa",)  # profiled without the CUDA graph


def load_arch(space, path: Path = ARCH_JSON):
    if not path.exists():
        raise SystemExit(f"{path} not found: pass --arch PATH to criteo_full_best.json")
    return from_nasrec_json(space, json.loads(path.read_text()))


# -- floor --------------------------------------------------------------------
def floor(space, arch, schema: DataSchema, model, batch: int, ceil: dict) -> dict:
    """FLOPs and bytes of one training step, and the times they take at the ceilings."""
    graph = space.materialize(arch, schema)
    cost = graph.cost
    e, f = graph.context.embedding_dim, schema.num_sparse
    dense_params = sum(p.numel() for p in model.dense_parameters())
    act = cost.bytes_read + cost.bytes_written  # fp32 activations per example, forward
    # Unfused attention: scores [h, W, W] per transformer, ~10 passes over them fwd+bwd.
    attn = sum(10 * 4 * m.attn.num_heads * m.proj.fc.out_features ** 2
               for m in model.modules() if type(m).__name__ == "TransformerModule")
    step = {
        "flops": 3 * graph.flops * batch,
        "matmul_flops": 3 * cost.matmul_flops * batch,
        "activation_bytes": 3 * act * batch,  # forward, and ~2x that backward
        "attention_score_bytes_unfused": attn * batch,
        # lookup out, its grad, sort/sum of grads, Adagrad read+write of weight and state
        "embedding_bytes": 8 * batch * f * e * 4,
        # read param (fwd, bwd, update), grad write+read, state read+write, param write
        "dense_param_bytes": 7 * 4 * dense_params,
    }
    out = {"batch": batch, "fwd_flops_per_example": graph.flops,
           "fwd_activation_bytes_per_example": act, **{f"step_{k}": v for k, v in step.items()}}
    if ceil:
        bw = ceil["copy_bytes_per_s"]
        fused = step["activation_bytes"] + step["embedding_bytes"] + step["dense_param_bytes"]
        times = {
            "compute_fp32_s": step["flops"] / ceil["matmul_fp32_flop_per_s"],
            "compute_tf32_s": step["flops"] / ceil["matmul_tf32_flop_per_s"],
            "compute_bf16_s": step["flops"] / ceil["matmul_bf16_flop_per_s"],
            "memory_fused_fp32_s": fused / bw,
            "memory_fused_bf16_s": (fused - step["activation_bytes"] / 2) / bw,
            "memory_unfused_attention_s": (fused + step["attention_score_bytes_unfused"]) / bw,
        }
        out.update(times)
        out["floor_fp32_s"] = max(times["compute_fp32_s"], times["memory_fused_fp32_s"])
        out["floor_bf16_s"] = max(times["compute_bf16_s"], times["memory_fused_bf16_s"])
        out["floor_fp32_examples_per_s"] = batch / out["floor_fp32_s"]
        out["floor_bf16_examples_per_s"] = batch / out["floor_bf16_s"]
    return out


# -- runs ----------------------------------------------------------------------------------
def throughput(space, arch, schema, data: CTRData, device, batch: int, options: dict,
               chunk: int, chunks: int, warmup_chunks: int) -> dict:
    """Steady-state examples/s of ``train`` with these TrainConfig options."""
    torch._dynamo.reset()
    model = build_model(space, arch, schema, seed=0)
    marks: list[dict] = []
    cfg = TrainConfig(steps=chunk * (chunks + warmup_chunks), batch_size=batch, lr=0.01,
                      device=str(device), log_every=chunk, check_every=chunk, **options)
    t0 = time.perf_counter()
    result = train(model, data, cfg, progress=marks.append)
    total = time.perf_counter() - t0
    rates = [(b["examples"] - a["examples"]) / (b["seconds"] - a["seconds"])
             for a, b in zip(marks[warmup_chunks - 1:], marks[warmup_chunks:], strict=False)]
    steady = marks[warmup_chunks - 1]
    overall = ((marks[-1]["examples"] - steady["examples"])
               / (marks[-1]["seconds"] - steady["seconds"]))
    del model
    return {"examples_per_s": overall, "chunk_rates": rates,
            "median_chunk_rate": statistics.median(rates), "warmup_s": steady["seconds"],
            "step_ms": 1e3 * batch / overall, "final_loss": result.final_loss,
            "wall_s": total, "steps": result.steps}


def ne_check(space, arch, schema, device, batch: int, steps: int, variants: list[str]) -> dict:
    """Train loss and valid NE after ``steps`` steps on learnable data, same seed each."""
    data = teacher_data(schema, batch * steps + 200_000, device)
    out = {"ctr": data.background_ctr, "batch": batch, "steps": steps}
    for name in variants:
        torch._dynamo.reset()
        model = build_model(space, arch, schema, seed=0)
        cfg = TrainConfig(steps=steps, batch_size=batch, lr=0.05, device=str(device),
                          log_every=50, check_every=50, **VARIANTS[name])
        try:
            res = train(model, data, cfg)
            metrics = evaluate(model, data.valid, data.background_ctr)
            out[name] = {"final_train_loss": res.final_loss, "valid_ne": metrics["ne"],
                         "valid_auc": metrics["auc"], "examples_per_s": res.examples_per_second}
        except Exception as exc:  # report and go on
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  ne-check {name}: {out[name]}", flush=True)
        del model
    return out


def profile(space, arch, schema, data, device, batch: int, options: dict, top: int) -> dict:
    """Kernels of 5 steps of ``TrainStep`` (no CUDA graph), after 5 warm-up steps."""
    from ranknas.evaluator.fast_train import TrainStep, precision_context

    torch._dynamo.reset()
    model = build_model(space, arch, schema, seed=0).to(device)
    cfg = TrainConfig(steps=10, batch_size=batch, device=str(device), **options)
    step = TrainStep(model, cfg, device)
    batches = [Batch(data.train.dense[i * batch:(i + 1) * batch],
                     data.train.sparse[i * batch:(i + 1) * batch],
                     data.train.labels[i * batch:(i + 1) * batch]) for i in range(10)]
    try:
        with precision_context(cfg.precision):
            for b in batches[:5]:
                step(b)
            torch.cuda.synchronize()
            acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=acts) as prof:
                for b in batches[5:]:
                    step(b)
                torch.cuda.synchronize()
    finally:
        step.close()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(e.self_device_time_total for e in events) / 5
    launches = sum(e.count for e in events) / 5
    rows = sorted(events, key=lambda e: -e.self_device_time_total)[:top]
    return {"options": options, "batch": batch, "gpu_us_per_step": kernel_us,
            "kernels_per_step": launches,
            "top": [{"name": e.key[:90], "us_per_step": e.self_device_time_total / 5,
                     "calls_per_step": e.count / 5} for e in rows]}


def check_attention(device: torch.device) -> dict:
    """Relative error of the fused attention kernel (forward, backward) against a float64
    reference, on fresh random inputs of the model's two attention shapes."""
    from ranknas.evaluator.fast_train import tiny_head_attention

    out = {}
    for n in (64, 48):
        qkv = torch.randn(512, n, 48, device=device, requires_grad=True)
        o, _ = tiny_head_attention(qkv, 8)
        grad = torch.randn_like(o)
        (dq,) = torch.autograd.grad(o, qkv, grad)
        ref_in = qkv.detach().double().requires_grad_()
        ref, _ = tiny_head_attention(ref_in, 8)  # float64 runs the PyTorch reference
        (ref_dq,) = torch.autograd.grad(ref, ref_in, grad.double())
        o, ref = o.detach().double(), ref.detach()
        out[f"L={n}"] = {"fwd": float((o - ref).norm() / ref.norm()),
                         "bwd": float((dq.double() - ref_dq).norm() / ref_dq.norm())}
        # forward + backward time at B=4096, fused kernel vs PyTorch's SDPA on [B, h, L, d]
        qkv = torch.randn(4096, n, 48, device=device, requires_grad=True)
        grad = torch.randn(4096, n, 16, device=device)

        def fused(qkv=qkv, grad=grad) -> None:
            torch.autograd.grad(tiny_head_attention(qkv, 8)[0], qkv, grad)

        def sdpa(qkv=qkv, grad=grad, n=n) -> None:
            q, k, v = qkv.view(4096, n, 3, 8, 2).permute(2, 0, 3, 1, 4).unbind(0)
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            torch.autograd.grad(o.transpose(1, 2).reshape(4096, n, 16), qkv, grad)

        out[f"L={n}"].update(fused_fwd_bwd_ms=1e3 * cuda_time(fused, 20),
                             sdpa_fwd_bwd_ms=1e3 * cuda_time(sdpa, 20))
    return out


def table(results: dict) -> str:
    lines = [f"{'variant':<22}{'B':>6}{'ex/s':>12}{'x eager':>9}{'x NASRec':>10}"
             f"{'step ms':>9}{'warmup s':>10}  loss"]
    for b, per in results["throughput"].items():
        base = per.get("eager", {}).get("examples_per_s")
        for name, r in per.items():
            if "error" in r:
                lines.append(f"{name:<22}{b:>6}  {r['error'][:70]}")
                continue
            v = r["examples_per_s"]
            ratio = f"{v / base:9.2f}" if base else f"{'-':>9}"
            ref = NASREC_REFERENCE.get(int(b))
            vs_ref = f"{v / ref:10.2f}" if ref else f"{'-':>10}"
            lines.append(f"{name:<22}{b:>6}{v:>12,.0f}{ratio}{vs_ref}{r['step_ms']:>9.2f}"
                         f"{r['warmup_s']:>10.1f}  {r['final_loss']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4096, 512])
    ap.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS),
                    help=f"default: all on CUDA, {', '.join(CPU_VARIANTS)} on CPU")
    ap.add_argument("--chunk", type=int, default=None, help="steps per timed chunk")
    ap.add_argument("--chunks", type=int, default=None, help="timed chunks")
    ap.add_argument("--warmup-chunks", type=int, default=1)
    ap.add_argument("--rows", type=int, default=None, help="random train rows on the device")
    ap.add_argument("--ne-steps", type=int, default=None, help="0: no NE check")
    ap.add_argument("--ne-variants", nargs="+", default=None, choices=sorted(VARIANTS))
    ap.add_argument("--profile", nargs="*", choices=sorted(VARIANTS), default=None,
                    help=f"kernel tables (no CUDA graph) of these; bare: {PROFILE_VARIANTS}")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="skip what is left after this many seconds")
    ap.add_argument("--out", type=Path, required=True, help="JSON results path")
    ap.add_argument("--arch", type=Path, default=ARCH_JSON,
                    help="NASRec JSON of the architecture (default: shared/ beside the checkout)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    variants = list(args.variants or (GPU_VARIANTS if gpu else CPU_VARIANTS))
    variants = [v for v in variants if gpu or not VARIANTS[v].get("cuda_graph")]
    chunk = args.chunk or (25 if gpu else 2)
    chunks = args.chunks or (8 if gpu else 2)
    rows = args.rows or (2**21 if gpu else 2**16)
    ne_steps = args.ne_steps if args.ne_steps is not None else (300 if gpu else 0)
    ne_variants = args.ne_variants or (list(GPU_NE_VARIANTS) if gpu else
                                       ["eager", "compile+index+bf16"])
    torch._dynamo.config.cache_size_limit = 64  # fresh models per variant: no silent eager
    t_start = time.perf_counter()

    space = load_space("nasrec_full")
    arch = load_arch(space, args.arch)
    schema = criteo_schema()
    env = environment(device)
    print(json.dumps(env), flush=True)
    ceil = ceilings(device)
    print("ceilings:", {k: f"{v:.3g}" for k, v in ceil.items()}, flush=True)
    probe = build_model(space, arch, schema)
    results: dict = {"environment": env, "ceilings": ceil, "nasrec_reference": NASREC_REFERENCE,
                     "target_examples_per_s": TARGET,
                     "model": {"params": sum(p.numel() for p in probe.parameters()),
                               "dense_params": sum(p.numel() for p in probe.dense_parameters()),
                               "table_rows": schema.total_rows},
                     "floor": {b: floor(space, arch, schema, probe, b, ceil)
                               for b in args.batch_sizes},
                     "throughput": {}, "args": {k: str(v) for k, v in vars(args).items()}}
    del probe
    if gpu:
        results["attention_check"] = check_attention(device)
        print("fused attention rel. error:", results["attention_check"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1, default=str))

    data = random_data(schema, rows, device)
    plan = [("tp", b) for b in args.batch_sizes[:1]]
    plan += [("ne", None)] if ne_steps else []
    plan += [("tp", b) for b in args.batch_sizes[1:]]
    profiled = (args.profile or PROFILE_VARIANTS) if args.profile is not None else ()
    plan += [("profile", None)] if profiled and gpu else []
    for kind, b in plan:
        if kind == "tp":
            per = results["throughput"].setdefault(b, {})
            for name in variants:
                if time.perf_counter() - t_start > args.budget_s:
                    per[name] = {"error": "skipped: time budget"}
                    continue
                try:
                    per[name] = throughput(space, arch, schema, data, device, b,
                                           VARIANTS[name], chunk, chunks, args.warmup_chunks)
                except Exception as exc:  # report and go on
                    traceback.print_exc()
                    per[name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"B={b} {name}: " + json.dumps(
                    {k: (round(v, 4) if isinstance(v, float) else v)
                     for k, v in per[name].items() if k != "chunk_rates"}), flush=True)
                save()
        elif kind == "ne" and time.perf_counter() - t_start < args.budget_s:
            results["ne_check"] = ne_check(space, arch, schema, device,
                                           args.batch_sizes[0], ne_steps, ne_variants)
            save()
        elif kind == "profile" and time.perf_counter() - t_start < args.budget_s:
            for name in profiled:
                opts = {**VARIANTS[name], "cuda_graph": False}
                try:
                    prof = profile(space, arch, schema, data, device, args.batch_sizes[0],
                                   opts, 15)
                except Exception as exc:
                    prof = {"options": opts, "error": f"{type(exc).__name__}: {exc}"}
                results.setdefault("profile", []).append(prof)
                print("profile:", json.dumps(prof, indent=0), flush=True)
            save()
    results["total_s"] = time.perf_counter() - t_start
    save()
    print("\nfloor per step:")
    for b, fl in results["floor"].items():
        print(f"  B={b}: " + ", ".join(
            f"{k}={v:.3g}" for k, v in fl.items() if isinstance(v, float | int)))
    if "ne_check" in results:
        print("NE check:", json.dumps(results["ne_check"]))
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
