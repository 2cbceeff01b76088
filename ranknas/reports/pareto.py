"""Pareto fronts, hypervolume and anytime curves over trial records.

Every function takes objectives *with directions*; internally each maximised objective is negated
so that everything is minimised ("minimisation form").

Hypervolume comes from Optuna's exact implementation, ``optuna._hypervolume.compute_hypervolume``
(2-D sweep, WFG for 3+ objectives). Optuna is already a hard dependency of ranknas, whereas pymoo
would add a compiled package for one function. The module is private in Optuna (no public
hypervolume API as of Optuna 5); Optuna's own ``plot_hypervolume_history`` uses it and its
signature ``(loss_vals, reference_point, assume_pareto=False)`` has been stable since Optuna 3.x,
so the import is isolated in :func:`hypervolume` and pinned by a test against a known value.

Reference point
---------------
Hypervolumes are comparable only under the same reference point. :func:`reference_point` gives:

* ``ne``: **1.0**, the NE of the constant predictor that always outputs the background CTR; any
  model worth keeping lies below it, and the value does not depend on what was sampled.
* ``auc``: **0.5** (random ranking; maximised).
* any other objective (``flops``, ``params``, ``logloss``, ...): its worst value over **every**
  evaluated trial of the study (all runs, failed and infeasible ones included since FLOPs and
  params are known before training) widened by 10 % (``max * 1.1`` for a positive minimised
  metric; ``worst -/+ 0.1 * |worst|`` in general).
* ``fixed``: values given by the experiment config (``report.reference: {flops: 2.0e6}``)
  override the rules above; fix them to compare hypervolumes *across* studies. Within one study
  the data-dependent rule is already shared by all strategy runs, so their curves compare.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ranknas.errors import ConfigError
from ranknas.evaluator.dominance import non_dominated_fronts
from ranknas.evaluator.results import Objective
from ranknas.execution.journal import TrialRecord

#: Reference values that do not depend on the sampled set (see module docstring).
FIXED_REFERENCE: Mapping[str, float] = {"ne": 1.0, "auc": 0.5}
MARGIN = 0.1

__all__ = ["AnytimeCurve", "anytime_curves", "as_objectives", "hypervolume",
           "non_dominated_sort", "pareto_front", "reference_point"]


def as_objectives(objectives: Iterable[Objective | str | Mapping]) -> tuple[Objective, ...]:
    """Objectives from ``Objective``s, names (default direction) or ``{name, direction}``."""
    out = []
    for i, obj in enumerate(objectives):
        if isinstance(obj, Objective):
            out.append(obj)
        elif isinstance(obj, str):
            out.append(Objective.named(obj))
        elif isinstance(obj, Mapping) and "name" in obj:
            out.append(Objective.named(str(obj["name"]), obj.get("direction")))
        else:
            raise ConfigError(f"objectives[{i}]", f"expected a name or {{name, direction}}, "
                              f"got {obj!r}")
    if not out:
        raise ConfigError("objectives", "need at least one objective")
    return tuple(out)


def _signs(directions: Sequence[str], m: int) -> np.ndarray:
    if len(directions) != m:
        raise ConfigError("directions", f"got {len(directions)} directions for {m} objectives")
    for i, d in enumerate(directions):
        if d not in ("minimize", "maximize"):
            raise ConfigError(f"directions[{i}]", f"expected minimize or maximize, got {d!r}")
    return np.array([1.0 if d == "minimize" else -1.0 for d in directions])


def _minimisation_form(points: np.ndarray | Sequence, directions: Sequence[str]) -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1 and pts.size == 0:
        pts = pts.reshape(0, len(directions))
    if pts.ndim != 2:
        raise ConfigError("points", f"expected an [N, M] array, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ConfigError("points", "every objective value must be finite (drop failed trials)")
    return pts * _signs(directions, pts.shape[1])


def non_dominated_sort(points: np.ndarray, directions: Sequence[str]) -> list[np.ndarray]:
    """Fronts of indices, best first (Deb et al.'s fast non-dominated sort).

    ``a`` dominates ``b`` when it is no worse in every objective and better in one; equal points
    never dominate each other, so duplicates share a front.

    Args:
        points: ``[N, M]`` objective values in their own units.
        directions: ``minimize``/``maximize`` per column.

    Returns:
        Index arrays (sorted ascending), one per front; together they partition ``range(N)``.
    """
    return non_dominated_fronts(_minimisation_form(points, directions))


def _ok_records(records: Iterable[TrialRecord], objectives: Sequence[Objective]
                ) -> tuple[list[TrialRecord], np.ndarray]:
    """Ok records with every objective finite, first occurrence of each arch_id kept."""
    seen: set[str] = set()
    kept, values = [], []
    for rec in records:
        vals = rec.result.values(objectives)
        if vals is None or rec.result.arch_id in seen:
            continue
        seen.add(rec.result.arch_id)
        kept.append(rec)
        values.append(vals)
    return kept, np.asarray(values, dtype=float).reshape(len(kept), len(objectives))


def pareto_front(records: Iterable[TrialRecord],
                 objectives: Sequence[Objective | str | Mapping]) -> list[TrialRecord]:
    """The non-dominated ok trials, one per ``arch_id``.

    Failed, infeasible and pruned trials and trials missing an objective are ignored. When the
    same architecture was evaluated more than once (by two strategies), its first record in
    journal order represents it. The front is sorted by the objectives in minimisation form
    (for NE vs FLOPs: best NE first).
    """
    objs = as_objectives(objectives)
    kept, values = _ok_records(records, objs)
    if not kept:
        return []
    front = non_dominated_sort(values, [o.direction for o in objs])[0]
    mins = values[front] * np.array([o.sign() for o in objs])
    order = np.lexsort(mins.T[::-1])
    return [kept[int(front[i])] for i in order]


def hypervolume(points: np.ndarray | Sequence, directions: Sequence[str],
                reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (Optuna's exact algorithm).

    Points that do not dominate the reference in every objective add nothing and are dropped
    (Optuna rejects them). An empty set has hypervolume 0.

    Args:
        points: ``[N, M]`` objective values in their own units.
        directions: ``minimize``/``maximize`` per column.
        reference: ``M`` values in the objectives' own units (see :func:`reference_point`).
    """
    from optuna._hypervolume import compute_hypervolume  # private; see module docstring

    m = len(directions)
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.size != m or not np.all(np.isfinite(ref)):
        raise ConfigError("reference", f"need {m} finite values, got {list(reference)}")
    pts = _minimisation_form(points, directions)
    ref = ref * _signs(directions, m)
    pts = pts[np.all(pts <= ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - pts[:, 0].min())
    return float(compute_hypervolume(pts, ref))


def reference_point(records: Iterable[TrialRecord],
                    objectives: Sequence[Objective | str | Mapping], *,
                    fixed: Mapping[str, float] | None = None,
                    margin: float = MARGIN) -> tuple[float, ...]:
    """The documented reference point of a study (rules in the module docstring).

    Args:
        records: Every trial of the study (all runs, all statuses).
        objectives: The objectives, in order.
        fixed: Per-objective values from the config that override the rules.
        margin: Relative widening of data-dependent coordinates.

    Raises:
        ConfigError: a data-dependent coordinate has no finite value in any record; fix it
            with ``report.reference``.
    """
    objs = as_objectives(objectives)
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - {o.name for o in objs})
    if unknown:
        raise ConfigError(f"report.reference.{unknown[0]}", "not one of the objectives "
                          f"({', '.join(o.name for o in objs)})")
    records = list(records)
    ref = []
    for o in objs:
        if o.name in fixed:
            value = float(fixed[o.name])
        elif o.name in FIXED_REFERENCE:
            value = FIXED_REFERENCE[o.name]
        else:
            seen = [r.result.metrics[o.name] for r in records if o.name in r.result.metrics]
            seen = [v for v in seen if math.isfinite(v)]
            if not seen:
                raise ConfigError(f"report.reference.{o.name}", "no trial has this metric; "
                                  "give a fixed reference value in the config")
            worst = max(seen) if o.direction == "minimize" else min(seen)
            widen = margin * abs(worst) if worst != 0 else margin
            value = worst + widen if o.direction == "minimize" else worst - widen
        if not math.isfinite(value):
            raise ConfigError(f"report.reference.{o.name}", f"must be finite, got {value}")
        ref.append(value)
    return tuple(ref)


@dataclass(frozen=True)
class AnytimeCurve:
    """One strategy run's progress against the budget, one point per trial.

    Attributes:
        run: Run label.
        strategy: Strategy name.
        examples: Cumulative examples processed after each trial.
        seconds: Cumulative evaluation seconds after each trial.
        best: Best value of the first (primary) objective so far (NaN before the first ok).
        hypervolume: Hypervolume of the run's ok trials so far, under the shared reference.
    """

    run: str
    strategy: str
    examples: np.ndarray
    seconds: np.ndarray
    best: np.ndarray
    hypervolume: np.ndarray


def anytime_curves(records: Iterable[TrialRecord],
                   objectives: Sequence[Objective | str | Mapping],
                   reference: Sequence[float]) -> dict[str, AnytimeCurve]:
    """Per run: best primary objective and hypervolume against cumulative examples.

    Trials are ordered by the run's cumulative examples (then trial id), which is the order they
    finished in. Use one ``reference`` for all runs so the curves compare.
    """
    objs = as_objectives(objectives)
    directions = [o.direction for o in objs]
    signs = np.array([o.sign() for o in objs])
    by_run: dict[str, list[TrialRecord]] = {}
    for rec in records:
        by_run.setdefault(rec.run, []).append(rec)
    curves = {}
    for run, recs in by_run.items():
        recs.sort(key=lambda r: (r.examples_total, r.trial_id))
        front = np.empty((0, len(objs)))
        best, hv = [], []
        for rec in recs:
            vals = rec.result.values(objs)
            if vals is not None:
                pts = np.vstack([front, np.asarray(vals)])
                front = pts[non_dominated_sort(pts, directions)[0]]
            if len(front):
                best.append(float(np.min(front[:, 0] * signs[0]) * signs[0]))
            else:
                best.append(math.nan)
            hv.append(hypervolume(front, directions, reference))
        curves[run] = AnytimeCurve(
            run, recs[0].strategy,
            np.array([r.examples_total for r in recs], dtype=float),
            np.array([r.seconds_total for r in recs], dtype=float),
            np.array(best), np.array(hv))
    return curves
