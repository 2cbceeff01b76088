"""Process-pool workers with the driver's dataset (shared memory) vs loading their own.

    python benchmarks/pool_data.py --rows 400000 --workers 2 --tasks 4

Runs the same standalone trainings (``dlrm``, synthetic data) through
:func:`ranknas.execution.pool.run_tasks` twice in one process: once with the driver's
evaluator seeded (workers receive its dataset at start), once without (each worker loads the
data itself, as before the sharing). Prints both wall times, their ratio and whether the NEs
agree (they must: results never depend on how the data arrived).
"""

from __future__ import annotations

import argparse
import random
import time

from ranknas.execution import pool
from ranknas.execution.base import EvalJob
from ranknas.spaces import load_space


def _timed(job: EvalJob, tasks: list, workers: int) -> tuple[float, list[float]]:
    nes: dict[int, float] = {}
    start = time.perf_counter()
    pool.run_tasks(pool.standalone_task, tasks, workers,
                   lambda i, r: nes.__setitem__(i, r.metrics.get("ne")))
    return time.perf_counter() - start, [nes[i] for i in range(len(tasks))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4)
    args = parser.parse_args()
    job = EvalJob("dlrm", {"spec": "synthetic", "rows": args.rows, "seed": 0},
                  {"examples": 2048, "batch_size": 512}, 0)
    rng = random.Random(0)
    space = load_space("dlrm")
    tasks = [(job, space.sample(rng), 2048) for _ in range(args.tasks)]
    start = time.perf_counter()
    evaluator = job.evaluator()
    print(f"driver loads the data: {time.perf_counter() - start:.2f} s")
    job._cache.clear()  # nothing held: every worker loads its own
    alone, nes_alone = _timed(job, tasks, args.workers)
    key = pool.seed_cache(job, evaluator)
    shared, nes_shared = _timed(job, tasks, args.workers)
    pool.release(key)
    print(f"{args.tasks} trainings, {args.workers} workers, {args.rows:,} rows: each worker "
          f"loads {alone:.2f} s, shared {shared:.2f} s ({alone / shared:.2f}x); "
          f"NEs equal: {nes_alone == nes_shared}")


if __name__ == "__main__":
    main()
