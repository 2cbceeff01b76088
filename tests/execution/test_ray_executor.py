"""The Ray Tune executor: same results as the local loop, parallel trials, failures as results."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass

import pytest

from ranknas.errors import ConfigError
from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.execution.base import Budget, EvalJob, LocalExecutor
from ranknas.execution.ray_executor import (
    RESULT_KEY,
    RayExecutor,
    _make_searcher,
    proposal_from_json,
    proposal_to_json,
)
from ranknas.spaces import load_space
from ranknas.strategies.base import Proposal
from ranknas.strategies.random_search import RandomSearch

ray = pytest.importorskip("ray")
pytest.importorskip("ray.tune")
from ray.tune.search import Searcher  # noqa: E402

SPACE = "dlrm"
NE = [Objective.named("ne")]


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module; the executors join it and leave it running."""
    # Jobs defined here travel to the workers by value (this module is not importable there).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    yield
    if started:
        ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


class Recording(RandomSearch):
    """Random search that remembers what it was told."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.told: list[tuple[Proposal, EvalResult]] = []

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        self.told.append((proposal, result))


@dataclass(frozen=True)
class Instant:
    """A job that returns at once: OK, 100 examples, the worker's pid as a metric."""

    space: str = SPACE

    def __call__(self, proposal: Proposal) -> EvalResult:
        return EvalResult(proposal.arch.arch_id, Status.OK,
                          {"ne": 1.0 + proposal.trial_id, "pid": os.getpid()}, examples=100)


@dataclass(frozen=True)
class Failing(Instant):
    """Raises inside the worker for one trial and kills its worker process for another (as a
    segfault or the OOM killer would)."""

    raise_at: int = 1
    crash_at: int = 2

    def __call__(self, proposal: Proposal) -> EvalResult:
        if proposal.trial_id == self.raise_at:
            raise ValueError(f"boom at trial {proposal.trial_id}")
        if proposal.trial_id == self.crash_at:
            os._exit(3)
        return super().__call__(proposal)


def tiny_job() -> EvalJob:
    return EvalJob(SPACE, {"spec": "synthetic", "rows": 2000, "seed": 0},
                   {"examples": 2048, "batch_size": 256}, seed=0)


def run(executor, job, budget: Budget, seed: int = 0) -> tuple[Recording, list]:
    strategy = Recording(load_space(SPACE), NE, seed=seed)
    seen: list[tuple[Proposal, EvalResult]] = []
    executor.run(strategy, job, budget, lambda p, r: seen.append((p, r)))
    return strategy, seen


def test_settings_are_validated():
    with pytest.raises(ConfigError, match=r"executor\.workers"):
        RayExecutor(workers=0)
    with pytest.raises(ConfigError, match=r"executor\.cpus_per_trial"):
        RayExecutor(cpus_per_trial=0)
    with pytest.raises(ConfigError, match=r"executor\.gpus_per_trial"):
        RayExecutor(gpus_per_trial=-1)
    with pytest.raises(ConfigError, match="Ray Client"):
        RayExecutor(address="ray://head:10001")


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'ray\[tune\]'") as info:
        RayExecutor().run(Recording(load_space(SPACE), NE), Instant(), Budget(trials=1),
                          lambda p, r: None)
    assert info.value.where == "executor.name"


def test_proposal_round_trips_through_json():
    space = load_space(SPACE)
    import random

    proposal = Proposal(space.sample(random.Random(3)), 5, 4096, {"parent": "abc"})
    obj = json.loads(json.dumps(proposal_to_json(proposal)))
    back = proposal_from_json(obj, SPACE)
    assert back == proposal
    assert back.arch.arch_id == obj["arch_id"]


def adapter(budget: Budget, **options) -> tuple[Recording, list, object]:
    """The Tune searcher around a recording random search, driven by hand (no Ray needed)."""
    strategy = Recording(load_space(SPACE), NE, **options)
    seen: list[tuple[Proposal, EvalResult]] = []
    return strategy, seen, _make_searcher(strategy, budget, lambda p, r: seen.append((p, r)))


def complete(searcher, trial_id: str, examples: int = 100) -> None:
    proposal = searcher.live[trial_id]
    result = EvalResult(proposal.arch.arch_id, Status.OK, {"ne": 1.0}, examples=examples)
    searcher.on_trial_complete(trial_id, {RESULT_KEY: json.dumps(result.to_json())})


def test_adapter_counts_outstanding_trials_against_a_trials_budget():
    budget = Budget(trials=3)
    strategy, seen, searcher = adapter(budget)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["proposal"]["trial_id"] for c in configs] == [0, 1, 2]
    assert searcher.suggest("t3") == Searcher.FINISHED
    for i in (2, 0, 1):
        complete(searcher, f"t{i}")
    assert [p.trial_id for p, _ in seen] == [2, 0, 1]
    assert [r for _, r in strategy.told] == [r for _, r in seen]
    assert budget.used_trials == 3


def test_adapter_waits_for_outstanding_trials_near_an_examples_budget():
    budget = Budget(examples=250)
    _, seen, searcher = adapter(budget)
    assert isinstance(searcher.suggest("a"), dict)
    assert isinstance(searcher.suggest("b"), dict)  # no trial done: nothing to estimate from
    complete(searcher, "a")  # 100 spent, b expected to bring 100 more: 200 < 250
    assert isinstance(searcher.suggest("c"), dict)
    assert searcher.suggest("d") is None  # 100 + 2 x 100 expected >= 250: wait
    complete(searcher, "b")
    assert searcher.suggest("d") is None
    complete(searcher, "c")
    assert searcher.suggest("d") == Searcher.FINISHED
    assert (budget.used_examples, len(seen)) == (300, 3)


def test_adapter_turns_errored_and_silent_trials_into_failed_results():
    _, seen, searcher = adapter(Budget(trials=5))
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", error=True)
    searcher.on_trial_complete("b", {"done": True})
    assert [r.status for _, r in seen] == [Status.FAILED, Status.FAILED]
    assert seen[0][1].reason == "ray trial errored"
    assert "without reporting a result" in seen[1][1].reason


def test_adapter_finishes_when_the_strategy_does():
    _, _, searcher = adapter(Budget(trials=5), max_trials=2)
    assert isinstance(searcher.suggest("a"), dict) and isinstance(searcher.suggest("b"), dict)
    assert searcher.suggest("c") == Searcher.FINISHED


def test_one_worker_matches_local_executor(ray_session):
    local_strategy, local = run(LocalExecutor(), tiny_job(), Budget(trials=3), seed=7)
    ray_strategy, remote = run(RayExecutor(workers=1), tiny_job(), Budget(trials=3), seed=7)

    assert [p.arch.arch_id for p, _ in remote] == [p.arch.arch_id for p, _ in local]
    assert [r.arch_id for _, r in remote] == [r.arch_id for _, r in local]
    assert all(r.ok for _, r in local)
    for (_, a), (_, b) in zip(local, remote, strict=True):
        assert (a.status, dict(a.metrics), a.examples) == (b.status, dict(b.metrics), b.examples)
    assert ray_strategy.state_dict() == local_strategy.state_dict()
    assert [r for _, r in ray_strategy.told] == [r for _, r in remote]


def test_two_workers_spend_the_budget_and_report_each_trial_once(ray_session, tmp_path):
    budget = Budget(trials=8)
    strategy, seen = run(RayExecutor(workers=2, storage_path=str(tmp_path)), Instant(), budget)

    assert sorted(p.trial_id for p, _ in seen) == list(range(8))
    assert len({id(p) for p, _ in seen}) == 8
    assert all(r.ok and r.arch_id == p.arch.arch_id for p, r in seen)
    assert [(p.trial_id, r) for p, r in strategy.told] == [(p.trial_id, r) for p, r in seen]
    assert (budget.used_trials, budget.used_examples) == (8, 800)
    assert any(tmp_path.iterdir()), "Tune keeps its result files under storage_path"


def test_failed_trials_are_told_and_the_loop_goes_on(ray_session):
    strategy, seen = run(RayExecutor(workers=1), Failing(raise_at=1, crash_at=2),
                         Budget(trials=4))

    assert [r.status for _, r in seen] == [Status.OK, Status.FAILED, Status.FAILED, Status.OK]
    assert [r.arch_id for _, r in seen] == [p.arch.arch_id for p, _ in seen]
    assert "ValueError: boom at trial 1" in seen[1][1].reason
    assert seen[2][1].reason.startswith("ray trial errored")
    assert [r for _, r in strategy.told] == [r for _, r in seen]


def test_an_error_in_the_driver_stops_the_run_and_is_raised(ray_session):
    calls = []

    def on_result(proposal: Proposal, result: EvalResult) -> None:
        calls.append(result)
        if len(calls) == 2:
            raise RuntimeError("tracker down")

    strategy = Recording(load_space(SPACE), NE)
    with pytest.raises(RuntimeError, match="tracker down"):
        RayExecutor(workers=1).run(strategy, Instant(), Budget(trials=50), on_result)
    assert len(calls) == 2
