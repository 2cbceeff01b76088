"""Ray executor overhead per trial vs the local executor, on 20 trivial trials."""
import statistics, sys, time
from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.execution.base import Budget, LocalExecutor
from ranknas.execution.ray_executor import RayExecutor
from ranknas.spaces import load_space
from ranknas.strategies.random_search import RandomSearch

class Instant:  # returns immediately
    space = "dlrm"
    def __call__(self, p):
        return EvalResult(p.arch.arch_id, Status.OK, {"ne": 1.0}, examples=1)

N, space = 20, load_space("dlrm")
def timed(ex, workers=1):
    stamps = []
    t0 = time.perf_counter()
    ex.run(RandomSearch(space, [Objective.named("ne")], seed=0), Instant(), Budget(trials=N),
           lambda p, r: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    print(f'   first result after {stamps[0]-t0:.2f} s, return {t0+total-stamps[-1]:.2f} s after last')
    return total, statistics.median(gaps)

local = timed(LocalExecutor())
print(f"local: {local[0]*1e3/N:.2f} ms/trial")
ex = RayExecutor(workers=int(sys.argv[1]) if len(sys.argv) > 1 else 1)
t = time.perf_counter(); ex._connect(); print(f"ray.init: {time.perf_counter()-t:.1f} s")
for rep in range(3):
    total, gap = timed(ex)
    print(f"ray run {rep}: {total:.2f} s for {N} trials = {total*1e3/N:.0f} ms/trial all-in "
          f"(overhead {(total - local[0])*1e3/N:.0f} ms/trial); steady-state median gap "
          f"{gap*1e3:.1f} ms/trial")
ex.close()
