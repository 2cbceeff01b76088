"""The Optuna adapter: distributions, result mapping, invalid points, samplers and resume."""

from __future__ import annotations

import json

import pytest
from optuna.trial import TrialState

from ranknas.errors import ConfigError, InvalidArchitecture, SpaceError
from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.strategies import make_strategy
from ranknas.strategies.optuna_adapter import OptunaStrategy, optuna_sampler_names
from ranknas.testing.strategies import toy_evaluate, toy_objectives, toy_space


def make(sampler="TPESampler", objectives=None, space=None, **options):
    return make_strategy("optuna", space or toy_space(), objectives or toy_objectives(),
                         sampler=sampler, **options)


def test_static_space_and_directions():
    strategy = make(objectives=[Objective.named("ne"), Objective.named("auc")])
    assert [d.name for d in strategy.study.directions] == ["MINIMIZE", "MAXIMIZE"]
    proposal = strategy.ask()
    trial = strategy.study.trials[-1]
    assert set(trial.params) == {c.name for c in toy_space().choices()}
    assert proposal.meta["optuna_trial"] == trial.number


def test_results_map_to_trial_states():
    space = toy_space()
    strategy = make(objectives=toy_objectives(2))
    proposals = [strategy.ask() for _ in range(5)]
    aid = [p.arch.arch_id for p in proposals]
    results = [toy_evaluate(space, proposals[0].arch),
               EvalResult(aid[1], Status.FAILED, reason="loss is nan"),
               EvalResult(aid[2], Status.INFEASIBLE, reason="flops 3e6 > max_flops 2e6"),
               EvalResult(aid[3], Status.PRUNED, {"ne": 0.5}),
               EvalResult(aid[4], Status.OK, {"ne": 0.5})]  # no flops: unusable
    for p, r in zip(proposals, results, strict=True):
        strategy.tell(p, r)
    trials = strategy.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                         TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].values == [results[0].metrics["ne"], results[0].metrics["flops"]]


def test_invalid_points_are_failed_and_retried(monkeypatch):
    space = toy_space.__wrapped__()  # a private instance to patch
    calls = {"n": 0}
    canonicalize = space.canonicalize

    def flaky(values, where="choices"):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise InvalidArchitecture("b1.op", "not today")
        return canonicalize(values, where)

    monkeypatch.setattr(space, "canonicalize", flaky)
    strategy = make(space=space)
    proposal = strategy.ask()
    states = [t.state for t in strategy.study.trials]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]
    assert "not today" in strategy.study.trials[0].user_attrs["invalid"]
    assert proposal.trial_id == 0
    def never(values, where="choices"):
        raise InvalidArchitecture("b1.op", "never")

    monkeypatch.setattr(space, "canonicalize", never)
    with pytest.raises(SpaceError, match="invalid architectures in a row"):
        make(space=space, max_retries=3).ask()


@pytest.mark.parametrize(("sampler", "n_objectives", "options"), [
    ("NSGAIIISampler", 2, {"population_size": 8}),
    ("RandomSampler", 1, {}),
    ("QMCSampler", 1, {}),
    ("BruteForceSampler", 1, {}),
    ("GPSampler", 1, {"n_startup_trials": 4}),
])
def test_other_samplers_run(sampler, n_objectives, options):
    space = toy_space()
    strategy = make(sampler, toy_objectives(n_objectives), sampler_options=options)
    for _ in range(6):
        p = strategy.ask()
        space.validate(p.arch)
        strategy.tell(p, toy_evaluate(space, p.arch))
    json.dumps(strategy.state_dict())


def test_sampler_option_errors():
    with pytest.raises(ConfigError) as err:
        make("TPE")
    assert err.value.where == "strategies[].sampler" and "TPESampler" in err.value.message
    assert "PartialFixedSampler" not in optuna_sampler_names()
    with pytest.raises(ConfigError) as err:
        make(sampler_options={"seed": 1})
    assert err.value.where == "strategies[].sampler_options.seed"
    with pytest.raises(ConfigError) as err:
        make(sampler_options={"n_startup": 5})
    assert err.value.where == "strategies[].sampler_options" and "n_startup" in str(err.value)


def test_resume_with_pending_proposals_continues():
    space = toy_space()
    strategy = make()
    for _ in range(5):
        p = strategy.ask()
        strategy.tell(p, toy_evaluate(space, p.arch))
    pending = [strategy.ask() for _ in range(3)]
    state = json.loads(json.dumps(strategy.state_dict()))
    resumed = OptunaStrategy(space, toy_objectives())
    resumed.load_state_dict(state)
    for p in pending:  # the loop tells what it finished after the resume
        resumed.tell(p, toy_evaluate(space, p.arch))
    complete = [t for t in resumed.study.trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 8
    assert {t.user_attrs["ranknas_trial_id"] for t in complete} == set(range(8))
    for _ in range(5):
        p = resumed.ask()
        space.validate(p.arch)
        resumed.tell(p, toy_evaluate(space, p.arch))
    assert p.trial_id == 12


def test_foreign_proposal_is_added_with_its_active_params():
    space = toy_space()
    other = make_strategy("random", space, toy_objectives(), seed=5)
    strategy = make()
    p = other.ask()
    strategy.tell(p, toy_evaluate(space, p.arch))
    (trial,) = strategy.study.trials
    assert trial.state is TrialState.COMPLETE and set(trial.params) == set(p.arch.as_dict())
    space.validate(strategy.ask().arch)
