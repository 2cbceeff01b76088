"""GPU time of single fixed-shape (masked) ops of ``nasrec_full``: eager against
``torch.compile``, each forward + backward replayed from one CUDA graph, and (``--kernels``)
the kernels of an eager forward + backward.

    python benchmarks/masked_op_cost.py --batch-size 4096            # eager vs compiled
    python benchmarks/masked_op_cost.py --batch-size 4096 --kernels  # kernel breakdown
    python benchmarks/masked_op_cost.py --batch-size 4096 --aten     # by ATen op and shapes

Each op gets random inputs at its ports' bounds (``--fraction 0.25``: a quarter of them, as
a narrow path's merged input), the default path buffers (every width mask on), TF32. A
sizable op (linear-3d, transformer) also runs at 32 and 16 fields. Compiling is timed
from the call of ``torch.compile`` to the end of the graph's capture.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch._dynamo
from bench_common import criteo_schema
from torch.profiler import ProfilerActivity, profile

from ranknas.spaces import load_space
from ranknas.spaces.ops import Kind
from ranknas.supernet import Supernet
from ranknas.supernet.segmented import segmented

CASES = (("b3.dense", "linear-2d"), ("b3.dense", "sigmoid-gating"), ("b3.dense", "sum"),
         ("b3.dense", "dot-product"), ("b3.sparse", "transformer"), ("b3.sparse", "linear-3d"),
         ("b3.fm", "fm"), ("b3.merge", "dense-to-sparse"), ("b3.dense_out", "add"))


def _inputs(layer, batch: int, dim: int, fraction: float) -> dict[str, torch.Tensor]:
    xs = {}
    for name, port in layer.ports.items():
        bound = port.port.bound
        n = max(1, int(bound * fraction)) if bound >= 8 else bound
        shape = (batch, n) if port.port.kind is Kind.DENSE else (batch, n, dim)
        xs[name] = torch.randn(shape, device="cuda").requires_grad_()
    return xs


def _step(fn, xs: dict[str, torch.Tensor], params: list[torch.Tensor]):
    out = fn(xs)
    return torch.autograd.grad(out, [*xs.values(), *params], torch.ones_like(out),
                               allow_unused=True)


def _graphed_us(fn, xs: dict[str, torch.Tensor], params: list[torch.Tensor],
                reps: int = 50) -> float:
    """Mean time of one forward + backward, replayed from a CUDA graph, in us."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            _step(fn, xs, params)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _step(fn, xs, params)
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3


def _kernels(fn, xs: dict[str, torch.Tensor], params: list[torch.Tensor], title: str,
             aten: bool = False) -> None:
    """The kernels of an eager forward + backward by GPU time, or (``aten``) the ATen ops
    that launched them, grouped by input shapes."""
    for _ in range(3):
        _step(fn, xs, params)
    torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA, *([ProfilerActivity.CPU] if aten else [])]
    with profile(activities=activities, record_shapes=aten) as prof:
        for _ in range(5):
            _step(fn, xs, params)
        torch.cuda.synchronize()
    rows = [(e.self_device_time_total / 5, e.count / 5,
             f"{e.key} {e.input_shapes}" if aten else e.key)
            for e in prof.key_averages(group_by_input_shape=aten)
            if e.self_device_time_total > 0 and e.key.startswith("aten::") == aten]
    print(f"{title}: {sum(r[0] for r in rows):.1f} us of kernels per forward + backward")
    for us, count, name in sorted(rows, reverse=True)[:25 if aten else 15]:
        print(f"  {us:8.1f} us {count:4.0f}x  {name[:120]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--eager-only", action="store_true")
    parser.add_argument("--kernels", action="store_true")
    parser.add_argument("--aten", action="store_true", help="--kernels by ATen op and shapes")
    parser.add_argument("--ops", nargs="*", default=None, help="only these ops (default: all)")
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    torch._dynamo.config.recompile_limit = 1000
    supernet = Supernet(load_space("nasrec_full"), criteo_schema(), seed=0).cuda().train()
    prog = segmented(supernet)
    floats, ints = prog.program.slots.defaults()
    path = (floats.cuda(), ints.cuda())
    print(f"B={args.batch_size}, inputs at {args.fraction} of the bounds\n"
          "| op | out | eager us | compiled us | eager / compiled | compile s |\n"
          "|---|---:|---:|---:|---:|---:|")
    for block, name in CASES:
        if args.ops is not None and name not in args.ops:
            continue
        op = prog.layers[(block, name, 0)].op
        params = list(op.m.parameters())
        for size in (None, 32, 16) if op.sizable and op.out_size == 64 else (None,):
            xs = _inputs(prog.layers[(block, name, 0)], args.batch_size, prog.program.dim,
                         args.fraction)

            def fn(xs, op=op, size=size):
                return op.forward(xs, path) if size is None else op.forward(xs, path, size)

            title = f"{block} {name} out={size or op.out_size}"
            if args.kernels or args.aten:
                _kernels(fn, xs, params, title, args.aten)
                continue
            eager = _graphed_us(fn, xs, params)
            compiled, seconds = float("nan"), 0.0
            if not args.eager_only:
                start = time.perf_counter()
                compiled = _graphed_us(torch.compile(fn, dynamic=False), xs, params)
                seconds = time.perf_counter() - start
            print(f"| {block} {name} | {size or op.out_size} | {eager:.1f} | {compiled:.1f} | "
                  f"{eager / compiled:.2f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
