"""Ray executor overhead per trial against the local executor, on trivial trials.

    python benchmarks/ray_overhead.py [--workers 1] [--trials 20] [--repeats 3]

The job returns at once, so every millisecond measured is executor overhead: Tune's set-up,
the worker start, and the per-trial round trip through the searcher.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.execution.base import Budget, Executor, LocalExecutor
from ranknas.execution.ray_executor import RayExecutor
from ranknas.spaces import load_space
from ranknas.strategies.base import Proposal
from ranknas.strategies.random_search import RandomSearch


class Instant:
    """A job that costs nothing; picklable for Ray workers."""

    space = "dlrm"

    def __call__(self, proposal: Proposal) -> EvalResult:
        return EvalResult(proposal.arch.arch_id, Status.OK, {"ne": 1.0}, examples=1)


def timed(executor: Executor, trials: int) -> tuple[float, float, float]:
    """(total seconds, seconds to the first result, median gap between results)."""
    space = load_space("dlrm")
    stamps: list[float] = []

    def record(proposal: Proposal, result: EvalResult) -> None:
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    executor.run(RandomSearch(space, [Objective.named("ne")], seed=0), Instant(),
                 Budget(trials=trials), record)
    total = time.perf_counter() - start
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return total, stamps[0] - start, statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    local, _, _ = timed(LocalExecutor(), args.trials)
    print(f"local: {local * 1e3 / args.trials:.2f} ms/trial")
    executor = RayExecutor(workers=args.workers)
    try:
        for rep in range(args.repeats):
            total, first, gap = timed(executor, args.trials)
            print(f"ray run {rep}: first result after {first:.2f} s; "
                  f"{total * 1e3 / args.trials:.0f} ms/trial all-in, steady-state "
                  f"{gap * 1e3:.1f} ms/trial ({gap / max(local / args.trials, 1e-9):.0f}x local)")
    finally:
        executor.close()


if __name__ == "__main__":
    main()
