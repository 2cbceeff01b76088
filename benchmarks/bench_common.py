"""What the benchmarks share: Criteo-like schemas and data made on the device, the device's
measured ceilings (copy bandwidth, matmul rates), a description of the machine, an
architecture at its widest widths and a device sync."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
from collections.abc import Callable

import torch

from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.schema import Batch, DataSchema
from ranknas.spaces import Architecture, SearchSpace
from ranknas.spaces.choices import Categorical

#: Criteo Kaggle (Display Advertising Challenge) rows per sparse field C1..C26.
CRITEO_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
CAP = 500_000


def criteo_schema() -> DataSchema:
    return DataSchema(13, tuple(min(c, CAP) for c in CRITEO_CARDINALITIES), "criteo-capped")


def _ids(schema: DataSchema, rows: int, device: torch.device, gen: torch.Generator,
         skew: float = 1.0) -> torch.Tensor:
    cards = torch.tensor(schema.cardinalities, device=device, dtype=torch.float64)
    u = torch.rand(rows, schema.num_sparse, device=device, generator=gen, dtype=torch.float64)
    return (u.pow(skew) * cards).long().clamp_(max=cards.long() - 1)


def random_data(schema: DataSchema, rows: int, device: torch.device, seed: int = 0) -> CTRData:
    """Uniform random ids and labels, made on ``device`` (no loading)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dense = torch.randn(rows, schema.num_dense, device=device, generator=gen)
    labels = (torch.rand(rows, device=device, generator=gen) < 0.25).float()
    full = Batch(dense, _ids(schema, rows, device, gen), labels)
    small = Batch(dense[:1024], full.sparse[:1024], labels[:1024])
    return CTRData(schema, full, small, small)


def teacher_data(schema: DataSchema, rows: int, device: torch.device, seed: int = 1) -> CTRData:
    """Learnable data: skewed ids (heads repeat), first-order id effects, two field-pair
    interactions, linear + nonlinear dense terms; labels ~ Bernoulli(sigmoid(logit))."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dense = torch.randn(rows, schema.num_dense, device=device, generator=gen)
    ids = _ids(schema, rows, device, gen, skew=4.0)  # P(small id) high
    phase = torch.rand(4, schema.num_sparse, device=device, generator=gen) * 6.28
    x = ids.double()
    first = (0.6 * torch.sin(x * 0.37 + phase[0])).sum(1) / math.sqrt(schema.num_sparse) * 2
    v = torch.sin(x * 0.11 + phase[1])
    pairs = 0.8 * (v[:, 0] * v[:, 1] + v[:, 2] * v[:, 3] + v[:, 10] * v[:, 11])
    w = torch.randn(schema.num_dense, device=device, generator=gen) * 0.3
    logit = (first + pairs).float() + dense @ w + 0.5 * torch.tanh(dense[:, 0] * dense[:, 1])
    logit = logit - 1.2
    labels = (torch.rand(rows, device=device, generator=gen) < torch.sigmoid(logit)).float()
    n_train = int(rows * 0.85)

    def part(a: int, b: int) -> Batch:
        return Batch(dense[a:b], ids[a:b], labels[a:b])

    return CTRData(schema, part(0, n_train), part(n_train, rows), part(n_train, rows))



# -- the device -----------------------------------------------------------------------------
def cuda_time(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def ceilings(device: torch.device) -> dict:
    """Copy bandwidth (read + write bytes / s) and matmul rates (FLOP/s) on random data."""
    if device.type != "cuda":
        return {}
    src = torch.randn(2**28, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    out = {"copy_bytes_per_s": 2 * src.numel() * 4 / cuda_time(lambda: dst.copy_(src), 10)}
    src = dst = None
    n = 8192
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        try:
            out[f"matmul_{name}_flop_per_s"] = 2 * n**3 / cuda_time(
                lambda a=a, b=b: a @ b, 5)
        finally:
            torch.set_float32_matmul_precision(before)
    return out


def environment(device: torch.device) -> dict:
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(),
           "cpu_cores": os.cpu_count(), "platform": platform.platform(),
           "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   sms=props.multi_processor_count, cuda=torch.version.cuda)
    return env


def widest(space: SearchSpace, arch: Architecture) -> Architecture:
    """``arch`` with every active width decision at its largest option."""
    values = arch.as_dict()
    for name in values:
        choice = space.choice(name)
        if ".width" in name and isinstance(choice, Categorical):
            values[name] = max(choice.options)
    return space.canonicalize(values)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def kernel_device() -> str:
    """Where a kernel check runs: ``cuda``, or ``cpu`` without CUDA or under Triton's
    interpreter (which runs on CPU tensors only, even on a CUDA machine)."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return "cuda" if torch.cuda.is_available() and not interpret else "cpu"


def kernel_check_main(doc: str, name: str, check: Callable[[str], bool],
                      bench: Callable[[argparse.Namespace], None],
                      options: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """The command line of a kernel check script: ``check(device)`` on
    :func:`kernel_device`, then with ``--bench`` (CUDA only) ``bench(args)``; exits non-zero
    when the check failed. ``options`` adds the script's own arguments."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--bench", action="store_true", help="time the kernels (CUDA only)")
    if options is not None:
        options(parser)
    args = parser.parse_args()
    device = kernel_device()
    good = check(device)
    if args.bench:
        if device != "cuda":
            raise SystemExit("--bench needs a CUDA device (and TRITON_INTERPRET unset)")
        bench(args)
    if not good:
        raise SystemExit(f"{name}: the kernels disagree with the reference")


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error of ``x`` against ``ref`` (in float64), relative to the reference's
    magnitude where that exceeds 1: the kernel checks' error measure."""
    ref = ref.double()
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp(min=1)).item()


def report_errors(label: str, errs: list[float], tol: float) -> bool:
    """Prints ``label: max rel err e1 e2 ... ok`` (or ``FAIL``); whether all are < ``tol``."""
    ok = max(errs) < tol
    print(f"{label}: max rel err {' '.join(f'{e:.1e}' for e in errs)} "
          f"{'ok' if ok else 'FAIL'}", flush=True)
    return ok


def graph_replay_us(fn: Callable[[], object], reps: int = 20) -> float:
    """Mean GPU microseconds per call of ``fn``: ``reps`` calls captured in one CUDA graph
    (after three eager warm-up calls on a side stream), the graph replayed ten times. No L2
    flush and no host launch cost: the kernels' time back to back."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 10 / reps * 1e3


def kernel_time_us(fn: Callable[[], object]) -> tuple[float, float]:
    """(CUDA-graph replay, eager) median microseconds per call of ``fn``: the graph time is
    the kernels' (inputs may stay in L2), the eager one flushes L2 and adds the host's launch
    overhead where that dominates."""
    import triton.testing

    eager = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median") * 1e3
    try:  # (captures on a side stream itself)
        graph = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
    except Exception as exc:  # timing is best effort; eager still stands
        print(f"(cuda graph timing failed: {exc!r})", file=sys.stderr)
        graph = float("nan")
    return graph, eager
