import itertools
import math

import numpy as np
import pytest

from ranknas.errors import ConfigError
from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.execution.journal import TrialRecord
from ranknas.reports.pareto import (
    anytime_curves,
    hypervolume,
    non_dominated_sort,
    pareto_front,
    reference_point,
)


def _dominates(a, b, directions) -> bool:
    better = worse = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "maximize":
            x, y = -x, -y
        better |= x < y
        worse |= x > y
    return better and not worse


def _brute_fronts(points, directions) -> list[list[int]]:
    left = list(range(len(points)))
    fronts = []
    while left:
        front = [i for i in left
                 if not any(_dominates(points[j], points[i], directions) for j in left)]
        fronts.append(front)
        left = [i for i in left if i not in front]
    return fronts


@pytest.mark.parametrize("directions", [
    ("minimize", "minimize"), ("minimize", "maximize"), ("maximize", "maximize"),
    ("minimize", "maximize", "minimize"), ("maximize",)])
@pytest.mark.parametrize("seed", range(4))
def test_non_dominated_sort_matches_brute_force(directions, seed):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 5, size=(40, len(directions))).astype(float)  # many ties
    fronts = non_dominated_sort(points, directions)
    assert [f.tolist() for f in fronts] == _brute_fronts(points.tolist(), directions)
    assert sorted(itertools.chain.from_iterable(fronts)) == list(range(40))


def test_non_dominated_sort_edge_cases():
    assert non_dominated_sort(np.empty((0, 2)), ["minimize", "minimize"]) == []
    dup = non_dominated_sort(np.array([[1.0, 2.0], [1.0, 2.0]]), ["minimize", "minimize"])
    assert [f.tolist() for f in dup] == [[0, 1]]
    with pytest.raises(ConfigError, match="directions"):
        non_dominated_sort(np.ones((2, 2)), ["minimize"])
    with pytest.raises(ConfigError, match="direction"):
        non_dominated_sort(np.ones((2, 1)), ["lower"])
    with pytest.raises(ConfigError, match="finite"):
        non_dominated_sort(np.array([[math.nan]]), ["minimize"])


def test_hypervolume_known_values():
    pts = [[1, 3], [2, 2], [3, 1]]
    assert hypervolume(pts, ["minimize", "minimize"], [4, 4]) == pytest.approx(6.0)
    # A dominated point and one outside the reference box change nothing.
    more = [*pts, [3, 3], [5, 0]]
    assert hypervolume(more, ["minimize", "minimize"], [4, 4]) == pytest.approx(6.0)
    # The same staircase with the second objective maximised (reference below it).
    assert hypervolume([[1, 1], [2, 2], [3, 3]], ["minimize", "maximize"],
                       [4, 0]) == pytest.approx(6.0)
    assert hypervolume([[0, 0, 0]], ["minimize"] * 3, [1, 2, 3]) == pytest.approx(6.0)
    assert hypervolume([[0.5]], ["minimize"], [1.0]) == pytest.approx(0.5)
    assert hypervolume(np.empty((0, 2)), ["minimize", "minimize"], [1, 1]) == 0.0
    with pytest.raises(ConfigError, match="reference"):
        hypervolume(pts, ["minimize", "minimize"], [4])


def _rec(run, trial, arch_id, status="ok", **metrics):
    return TrialRecord(run, run, trial, {"space": "x", "choices": {}},
                       EvalResult(arch_id, Status(status), metrics, 100, 1.0), 100 * (trial + 1),
                       float(trial + 1), {})


def test_pareto_front_filters_dedupes_and_handles_maximize():
    recs = [_rec("a", 0, "p", ne=0.9, auc=0.70), _rec("a", 1, "q", ne=0.8, auc=0.75),
            _rec("b", 0, "q", ne=0.8, auc=0.75),  # same arch found by run b: kept once
            _rec("b", 1, "r", ne=0.85, auc=0.80), _rec("b", 2, "s", "failed", ne=0.1, auc=0.9),
            _rec("b", 3, "t", ne=0.95)]  # no auc: ignored
    front = pareto_front(recs, [Objective("ne"), Objective("auc", "maximize")])
    assert [(r.run, r.result.arch_id) for r in front] == [("a", "q"), ("b", "r")]
    assert pareto_front([], ["ne", "flops"]) == []


def test_reference_point_rules():
    recs = [_rec("a", 0, "p", ne=0.9, flops=100.0),
            _rec("a", 1, "q", "infeasible", flops=500.0)]  # counts for the FLOPs bound
    assert reference_point(recs, ["ne", "flops"]) == pytest.approx((1.0, 550.0))
    assert reference_point(recs, ["ne", "flops"], fixed={"flops": 1e3}) == (1.0, 1e3)
    assert reference_point(recs, [{"name": "auc"}]) == (0.5,)
    with pytest.raises(ConfigError, match=r"report\.reference\.params"):
        reference_point(recs, ["ne", "flops"], fixed={"params": 1})
    with pytest.raises(ConfigError, match="no trial has this metric"):
        reference_point(recs, ["ne", "params"])


def test_anytime_curves(records):
    objs = ["ne", "flops"]
    ref = reference_point(records, objs)
    curves = anytime_curves(records, objs, ref)
    assert set(curves) == {"random", "evolution"}
    for run, c in curves.items():
        n = sum(r.run == run for r in records)
        assert len(c.examples) == len(c.best) == len(c.hypervolume) == n
        assert np.all(np.diff(c.examples) >= 0)
        assert np.all(np.diff(c.best[~np.isnan(c.best)]) <= 0)
        assert np.all(np.diff(c.hypervolume) >= -1e-12)
        ok = [r.result.values([Objective("ne"), Objective("flops")]) for r in records
              if r.run == run]
        ok = np.array([v for v in ok if v is not None])
        assert c.best[-1] == pytest.approx(ok[:, 0].min())
        assert c.hypervolume[-1] == pytest.approx(hypervolume(ok, ["minimize"] * 2, ref))
