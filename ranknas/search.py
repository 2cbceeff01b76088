"""The main loop: every strategy of a study on the same space, data and budget.

Outputs under ``OUT``: ``config.json``, ``trials.jsonl`` (the journal, one line per finished
trial with the strategy state after it), ``baseline.json``, the MLflow store, ``report/``.
A killed search resumes from the journal: finished trials are neither re-run nor duplicated.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ranknas.config import ExperimentConfig, StrategySpec
from ranknas.errors import ConfigError
from ranknas.evaluator.data.schema import DataSchema
from ranknas.evaluator.results import EvalResult, Status
from ranknas.execution.base import Budget, EvalJob, Executor, LocalExecutor, cost_examples
from ranknas.execution.journal import Journal, TrialRecord
from ranknas.spaces import Architecture, SearchSpace, load_space
from ranknas.strategies.base import Proposal, Strategy


def resolve_baseline(spec: str, space: SearchSpace) -> tuple[str, Architecture]:
    """``dlrm-default``, ``random:SEED`` (in the search space), ``SPACE:random:SEED``, or a
    ranknas/NASRec architecture JSON file. Returns (space spec, architecture)."""
    import random

    from ranknas.spaces.builtin.dlrm import dlrm_default
    from ranknas.spaces.nasrec_json import from_nasrec_json, is_nasrec_json

    if spec == "dlrm-default":
        return "dlrm", dlrm_default()
    parts = spec.split(":")
    if len(parts) >= 2 and parts[-2] == "random" and parts[-1].isdigit():
        space_spec = ":".join(parts[:-2]) or None
        target = load_space(space_spec) if space_spec else space
        return space_spec or space.name, target.sample(random.Random(int(parts[-1])))
    path = Path(spec)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError("baseline", f"cannot read {spec!r} ({err}); use dlrm-default, "
                          "random:SEED or an architecture JSON file") from None
    if is_nasrec_json(doc):
        return space.name, from_nasrec_json(space, doc, where="baseline")
    other = space if doc.get("space") == space.name else load_space(str(doc.get("space")))
    return other.name, other.from_json(doc, where="baseline")


def make_executor(spec: dict[str, Any], out: Path) -> Executor:
    if spec.get("name", "local") == "local":
        return LocalExecutor()
    from ranknas.execution.ray_executor import RayExecutor

    opts = {k: v for k, v in spec.items() if k != "name"}
    return RayExecutor(storage_path=str((out / "ray").resolve()), **opts)


def build_strategy(spec: StrategySpec, config: ExperimentConfig, space: SearchSpace,
                   schema: DataSchema) -> Strategy:
    """The registry's strategy, wrapped in constraints (checked on ``schema``) and dedupe."""
    from ranknas.strategies import Constraints, Dedupe, make_strategy

    where = f"strategies[{config.strategies.index(spec)}]"
    strategy = make_strategy(spec.name, space, config.objectives, seed=config.seed,
                             where=where, **spec.options)
    if config.constraints:
        strategy = Constraints(strategy, schema=schema, **config.constraints)
    if config.dedupe:
        strategy = Dedupe(strategy)
    return strategy


def _prepare_out(config: ExperimentConfig, out: Path, resume: bool) -> Journal:
    config_path = out / "config.json"
    journal = Journal(out / "trials.jsonl")
    if config_path.exists():
        if not resume:
            raise ConfigError("--out", f"{out} already holds a search; add --resume to continue "
                              "it, or choose another --out")
        stored = json.loads(config_path.read_text())
        if stored != config.to_json():
            raise ConfigError("--resume", f"the config differs from the one the search in {out} "
                              "started with; resume with the same config or use a new --out")
        journal.repair()
    else:
        if resume:
            raise ConfigError("--resume", f"nothing to resume in {out} (no config.json)")
        out.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(config.to_json(), indent=1, sort_keys=True))
    return journal


def _evaluate_baseline(config: ExperimentConfig, space: SearchSpace, out: Path,
                       job: EvalJob) -> None:
    path = out / "baseline.json"
    if config.baseline is None or path.exists():
        return
    space_spec, arch = resolve_baseline(config.baseline, space)
    other = job if space_spec == space.name else EvalJob(space_spec, job.data, job.train,
                                                         job.seed)
    result = other(Proposal(arch, -1))
    path.write_text(json.dumps({"name": config.baseline, "arch": arch.to_json(),
                                "result": result.to_json()}, indent=1))


def run_search(config: ExperimentConfig, out: str | Path, *, resume: bool = False,
               progress: bool = True, echo: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) every strategy of ``config``; returns the output folder."""

    out = Path(out)
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    space = load_space(config.space)
    job = EvalJob(config.space, dict(config.data), asdict(config.train_config()), config.seed)
    job.evaluator()  # bad data options fail here, before the output folder exists
    journal = _prepare_out(config, out, resume)
    from ranknas.reports.tracking import make_tracker

    tracker = make_tracker(config, out)
    tracker.check()  # an unreachable server is reported before any training
    tracker.start_study(config.to_json())
    tracker.sync(journal)  # trials journaled but not yet tracked when a search was killed
    _evaluate_baseline(config, space, out, job)
    executor = make_executor(dict(config.executor), out)
    try:
        for spec in config.strategies:
            _run_one(spec, config, space, journal, job, executor, tracker, progress, echo)
    finally:
        executor.close()
    from ranknas.reports.report import write_report

    report = write_report(out)
    tracker.log_artifacts(report.parent)
    tracker.end_study("FINISHED")
    return out


def _run_one(spec: StrategySpec, config: ExperimentConfig, space: SearchSpace, journal: Journal,
             job: EvalJob, executor: Executor, tracker: Any, progress: bool,
             echo: Callable[[str], None]) -> None:
    from tqdm import tqdm

    strategy = build_strategy(spec, config, space, job.evaluator().data.schema)
    budget = Budget(**config.budget)
    done = journal.records(run=spec.label)
    totals = {"examples": 0, "seconds": 0.0}
    if done:
        if done[-1].state is None:
            raise ConfigError("--resume", f"run {spec.label!r} has no saved strategy state")
        strategy.load_state_dict(done[-1].state)
        spent = [r for r in done if r.result.status is not Status.INFEASIBLE]
        budget.used_trials = len(spent)
        budget.used_examples = done[-1].examples_total
        totals = {"examples": done[-1].examples_total, "seconds": done[-1].seconds_total}
        echo(f"{spec.label}: resuming after {len(done)} finished trials")
    if budget.exhausted:
        return
    bar = tqdm(total=budget.trials or None, initial=budget.used_trials, desc=spec.label,
               unit="trial", file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def on_result(proposal: Proposal, result: EvalResult) -> None:
        totals["examples"] += result.examples + cost_examples(proposal)
        totals["seconds"] += result.seconds
        record = TrialRecord(spec.label, spec.name, proposal.trial_id, proposal.arch.to_json(),
                             result, totals["examples"], totals["seconds"],
                             dict(proposal.meta), strategy.state_dict())
        journal.append(record)
        tracker.log_trial(record, proposal.arch.as_dict())
        if result.status is not Status.INFEASIBLE:
            bar.update(1)
        ne = result.metrics.get("ne")
        bar.set_postfix_str(f"{result.status.value} NE={ne:.4f}" if ne is not None
                            else result.status.value)

    strategy.attach(job)
    executor.run(strategy, job, budget, on_result)
    bar.close()
    summary = strategy.summary()
    if summary is not None:  # work outside the trials: saved beside the journal and tracked
        path = journal.path.parent / "strategies" / f"{spec.label}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(summary, indent=1, default=str))
        tracker.log_artifacts(path, "strategies")
        tracker.log_series(summary.get("metrics", {}), prefix=f"{spec.label}.")
