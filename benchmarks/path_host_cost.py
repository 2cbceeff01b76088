"""Host cost of a new supernet path: sampling, fixed-shape encoding, the sliced plan.

    python benchmarks/path_host_cost.py --space nasrec_full --repeats 8

For an A/B against an older commit, run this file from a worktree of that commit.

Best of ``--repeats`` loops of 100 fresh uniformly sampled paths (Criteo-like schema), each
part timed on its own: ``sampler.sample``; ``MaskedProgram.encode`` (CPU, fresh buffers);
``Supernet.plan`` (the sliced execution's per-path plan); and the path buffers a CUDA
encoding reuses, ``Writer.reset()``, against fresh ones, ``Writer(slots)``, each timed
between real encodings (fresh megabyte buffers cost page faults only when the allocator has
been churned). ``--prefetch 4`` also times a ``PathPrefetcher`` (the same work in a worker
process). No GPU needed.
"""

from __future__ import annotations

import argparse
import time

from bench_common import criteo_schema

from ranknas.spaces import load_space
from ranknas.supernet import Supernet, make_sampler
from ranknas.supernet.masked import program
from ranknas.supernet.masked_base import Writer

PATHS = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--space", default="nasrec_full")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=0, metavar="DEPTH",
                        help="also time a path prefetch worker of this depth")
    args = parser.parse_args()
    space, schema = load_space(args.space), criteo_schema()
    supernet = Supernet(space, schema, seed=0)
    sampler = make_sampler("uniform", space, 0, schema=schema)
    prog = program(supernet)
    scratch = Writer(prog.slots)
    names = ("sample", "encode", "plan", "writer_fresh", "writer_reset")
    best = dict.fromkeys(names, float("inf"))
    for rep in range(args.repeats + 1):  # the first loop warms up and is not kept
        times = [time.perf_counter()]
        archs = [sampler.sample(rep * PATHS + i) for i in range(PATHS)]
        times.append(time.perf_counter())
        for arch in archs:
            prog.encode(supernet, arch)
        times.append(time.perf_counter())
        for arch in archs:
            supernet.plan(arch)
        times.append(time.perf_counter())
        fresh = reset = 0.0
        for i in range(PATHS):  # between real encodings, as in training (allocator churn)
            prog.encode(supernet, sampler.sample(10**6 + rep * PATHS + i))
            start = time.perf_counter()
            Writer(prog.slots)
            mid = time.perf_counter()
            if hasattr(scratch, "reset"):  # absent before the change (for an A/B)
                scratch.reset()
            fresh, reset = fresh + mid - start, reset + time.perf_counter() - mid
        if rep:
            for name, t0, t1 in zip(names, times, times[1:], strict=False):
                best[name] = min(best[name], (t1 - t0) * 1e3 / PATHS)
            best["writer_fresh"] = min(best["writer_fresh"], fresh * 1e3 / PATHS)
            best["writer_reset"] = min(best["writer_reset"], reset * 1e3 / PATHS)
    print(" ".join(f"{name} {ms:.3f} ms" for name, ms in best.items()))
    if args.prefetch:
        prefetch(supernet, space, schema, args.prefetch)


def prefetch(supernet: Supernet, space, schema, depth: int) -> None:
    """A ``PathPrefetcher``'s rate taken back to back (the worker's pace: what bounds a
    trainer whose own host work is shorter), and the trainer's cost of one take from a full
    queue. CPU encodings: each take copies the path out of shared memory (CUDA pins it)."""
    from ranknas.supernet.prefetch import PathPrefetcher

    paths = PathPrefetcher(supernet, depth, True)
    paths.start(make_sampler("uniform", space, 1, schema=schema), 0)
    try:
        for step in range(20):  # the worker's start-up and warm-up
            paths.take(step)
        start = time.perf_counter()
        for step in range(20, 20 + PATHS):
            paths.take(step)
        pace = (time.perf_counter() - start) * 1e3 / PATHS
        step, taken = 20 + PATHS, 0.0
        for _ in range(5):
            time.sleep(0.5)  # the queue fills
            start = time.perf_counter()
            for _ in range(depth):
                paths.take(step)
                step += 1
            taken += time.perf_counter() - start
        print(f"prefetch depth {depth}: {pace:.3f} ms per path back to back, "
              f"{taken * 1e3 / (5 * depth):.3f} ms per take from a full queue")
    finally:
        paths.close()


if __name__ == "__main__":
    main()
