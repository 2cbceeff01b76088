"""Where a supernet training step's time goes: host cost of a new path, and a profile.

    python benchmarks/supernet_profile.py --device cuda --batch-size 4096 \
        --set execution=segmented --set cuda_graph=true --set precision=tf32

``nasrec_full`` on Criteo-like on-device data (as ``supernet_throughput.py``), trained by
``SupernetTrainer`` with a new uniformly sampled path every step. After ``--warmup`` steps
(captures and compiles happen there) it prints the host cost of choosing a path
(``sampler.sample``) and of encoding it for the fixed-shape executions, the mean step time,
and a ``torch.profiler`` table of ``--profile-steps`` steps sorted by host time and by device
time, the host time of each phase of a step (``ranknas.*`` profiler ranges: sample (taking
the path a prefetch worker drew, where one runs: ``path_prefetch``), encode,
forward, backward, update), the time the GPU was busy per step (compare that with the step
time to see which side bounds the step) and, on CUDA, the device activities per step by
duration.

``--segment-times`` (segmented execution on CUDA) instead times every segment's forward and
backward (graph replays, or eager runs; the graphs are not joined into one launch then) with
CUDA events and prints the GPU time per step by op, e.g. ``--set execution=segmented --set
cuda_graph=true --set precision=tf32 --warmup 1000 --segment-times``.

``--gaps`` (CUDA) instead records ``--profile-steps`` steps with CUDA activities only (no
host op ranges, so the host runs near its own speed) and prints where the GPU idled: the
gaps between consecutive device activities, split into those inside one launch (kernels of
one graph) and those between launches, each either *host-late* (the launching call returned
after the GPU had gone idle: the host bounds the step) or *queued* (the work was queued in
time: the device's own launch latency; unknown for a call kineto does not trace, as
``graph_chain``'s ``cuGraphLaunch`` through ``ctypes``); then the host's CUDA calls by time.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml
from bench_common import criteo_schema, random_data
from torch.profiler import ProfilerActivity, profile

from ranknas.spaces import load_space
from ranknas.supernet import Supernet, SupernetTrainConfig, SupernetTrainer, make_sampler
from ranknas.supernet.masked import encode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _busy_ms(prof: profile) -> float:
    """Time the GPU ran anything (kernels, copies; overlaps counted once), in ms: the union
    of the device intervals, so user annotations and graph nodes are not double counted."""
    spans = sorted((e.start_ns(), e.end_ns()) for e in prof.profiler.kineto_results.events()
                   if e.device_type() == torch.autograd.DeviceType.CUDA
                   and not e.is_user_annotation())
    busy, end = 0, 0
    for start, stop in spans:
        busy += max(0, stop - max(start, end))
        end = max(end, stop)
    return busy / 1e6


def kernel_sizes(prof: profile, steps: int) -> str:
    """Device activities per step by duration: how many, and the time they take. Many short
    kernels that cannot fill the GPU point to fusion or concurrent streams; a few long ones,
    to their own kernels."""
    spans = [(e.end_ns() - e.start_ns()) / 1e3 for e in prof.profiler.kineto_results.events()
             if e.device_type() == torch.autograd.DeviceType.CUDA
             and not e.is_user_annotation()]
    bins = ((0, 3), (3, 10), (10, 30), (30, 100), (100, float("inf")))
    parts = []
    for lo, hi in bins:
        inside = [us for us in spans if lo <= us < hi]
        parts.append(f"{lo}-{hi} us: {len(inside) / steps:.0f} "
                     f"({sum(inside) / steps / 1e3:.2f} ms)")
    return (f"device activities per step, {len(spans) / steps:.0f} in all, by duration: "
            + "; ".join(parts))


def idle_gaps(trace: list[dict], steps: int) -> str:
    """Where the GPU idled in a chrome trace's events (``--gaps``, module docstring)."""
    device, calls = [], {}
    for e in trace:
        if e.get("ph") != "X":
            continue
        corr = e.get("args", {}).get("correlation")
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            device.append((e["ts"], e["ts"] + e["dur"], corr, e["name"]))
        elif e.get("cat") in ("cuda_runtime", "cuda_driver"):
            calls[corr] = e
    if not device:
        return "no device activities recorded"
    device.sort()
    busy, (start, end, corr, _) = 0.0, device[0]
    first, kinds = start, collections.defaultdict(lambda: [0, 0.0])
    for s, e, c, _ in device[1:]:
        if s > end:  # idle from end to s
            busy += end - start
            call = calls.get(c)  # kineto does not trace a driver call made through ctypes
            late = ("unknown" if call is None else
                    "host-late" if call["ts"] + call["dur"] > end else "queued")
            where = ("inside one launch" if c == corr else
                     f"between launches ({call['name'] if call else 'an untraced call'})")
            kind = kinds[(where, late)]
            kind[0] += 1
            kind[1] += s - end
            start = s
        end, corr = max(end, e), c
    busy += end - start
    lines = [f"GPU per step: span {(end - first) / steps / 1e3:.3f} ms, busy "
             f"{busy / steps / 1e3:.3f} ms, idle {(end - first - busy) / steps / 1e3:.3f} ms "
             f"({len(device) / steps:.0f} activities)",
             "| idle gaps | kind | per step | ms / step |", "|---|---|---:|---:|"]
    for (where, kind), (n, us) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {where} | {kind} | {n / steps:.1f} | {us / steps / 1e3:.3f} |")
    by_name = collections.defaultdict(list)
    for call in calls.values():
        by_name[call["name"]].append(call["dur"])
    lines += ["| host call | per step | ms / step | p50 us | max us |", "|---|---:|---:|---:|---:|"]
    for name, durs in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:10]:
        durs.sort()
        lines.append(f"| {name} | {len(durs) / steps:.1f} | {sum(durs) / steps / 1e3:.3f} | "
                     f"{durs[len(durs) // 2]:.1f} | {durs[-1]:.0f} |")
    return "\n".join(lines)


def _gaps(trainer: SupernetTrainer, steps: int) -> None:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        trainer.train(steps * trainer.config.batch_size)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        print(idle_gaps(json.loads(path.read_text())["traceEvents"], steps))


def segment_times(trainer: SupernetTrainer, steps: int) -> None:
    """Print the GPU time per step of each op's segments (forward, backward) over ``steps``
    steps, from CUDA events around each segment's run."""
    from ranknas.supernet import segment_run

    events: list[tuple[str, str, torch.cuda.Event, torch.cuda.Event]] = []
    originals = {}
    for phase in ("forward", "backward"):
        originals[phase] = run = getattr(segment_run.SegmentRun, phase)

        def timed(self, run=run, phase=phase) -> None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(self)
            end.record()
            events.append((self.key[1] if len(self.key) > 1 else "head", phase, start, end))

        setattr(segment_run.SegmentRun, phase, timed)
    try:
        trainer.train(steps * trainer.config.batch_size)
        torch.cuda.synchronize()
    finally:
        for phase, run in originals.items():
            setattr(segment_run.SegmentRun, phase, run)
    ms, calls = collections.defaultdict(float), collections.Counter()
    for op, phase, start, end in events:
        ms[(op, phase)] += start.elapsed_time(end) / steps
        calls[(op, phase)] += 1
    print(f"segments: {sum(ms.values()):.2f} ms of GPU time per step")
    print("| op | phase | ms / step | calls / step | us / call |\n|---|---|---:|---:|---:|")
    for (op, phase), t in sorted(ms.items(), key=lambda kv: -kv[1]):
        n = calls[(op, phase)] / steps
        print(f"| {op} | {phase} | {t:.3f} | {n:.2f} | {t / n * 1e3:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--segment-times", action="store_true",
                        help="time each segment (segmented execution, CUDA) instead")
    parser.add_argument("--gaps", action="store_true",
                        help="where the GPU idles (CUDA) instead: see the module docstring")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a SupernetTrainConfig field (value as YAML)")
    args = parser.parse_args()
    device, b = torch.device(args.device), args.batch_size
    if (args.segment_times or args.gaps) and device.type != "cuda":
        parser.error("--segment-times and --gaps trace the GPU: they need --device cuda")
    if args.segment_times:  # it times each segment's graph: keep them separate launches
        from ranknas.supernet import graph_chain

        graph_chain.ENABLED = False
    fields = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    space, schema = load_space("nasrec_full"), criteo_schema()
    trainer = SupernetTrainer(
        Supernet(space, schema, seed=0), random_data(schema, 1 << 20, device),
        make_sampler("uniform", space, 0, schema=schema),
        SupernetTrainConfig(examples=1 << 40, batch_size=b, device=str(device),
                            log_every=1 << 30, **{"check_every": 50, **fields}))
    trainer.train(args.warmup * b)
    _sync(device)
    if args.segment_times:
        segment_times(trainer, args.steps)
        return
    if args.gaps:
        _gaps(trainer, args.profile_steps)
        return

    # a copy: drawing from the trainer's sampler would restart its path prefetch worker
    sampler = copy.deepcopy(trainer.sampler)
    paths = [sampler.sample(10_000 + i) for i in range(50)]  # not seen in warm-up
    start = time.perf_counter()
    for i in range(50):
        sampler.sample(20_000 + i)
    sample_ms = (time.perf_counter() - start) * 20
    start = time.perf_counter()
    for arch in paths:
        encode(trainer.supernet, arch)
    encode_ms = (time.perf_counter() - start) * 20
    start = time.perf_counter()
    trainer.train(args.steps * b)
    _sync(device)
    step_ms = (time.perf_counter() - start) / args.steps * 1e3

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        trainer.train(args.profile_steps * b)
        _sync(device)
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    if device.type == "cuda":
        print(table.table(sort_by="self_device_time_total", row_limit=20,
                          max_name_column_width=60))
    print("host phases per step (ms, under the profiler):", ", ".join(
        f"{e.key.removeprefix('ranknas.')} {e.cpu_time_total / args.profile_steps / 1e3:.2f}"
        for e in table if e.key.startswith("ranknas.")
        and e.device_type == torch.autograd.DeviceType.CPU))
    host = sum(e.self_cpu_time_total for e in table) / args.profile_steps / 1e3
    gpu = _busy_ms(prof) / args.profile_steps
    print(f"B={b} {fields}: step {step_ms:.1f} ms ({b / step_ms * 1e3:,.0f} ex/s); new path: "
          f"sample {sample_ms:.2f} ms + encode {encode_ms:.2f} ms; per profiled step: host "
          f"{host:.1f} ms, GPU busy {gpu:.1f} ms")
    if device.type == "cuda":
        print(kernel_sizes(prof, args.profile_steps))


if __name__ == "__main__":
    main()
