"""Dedupe and Constraints: what the search loop sees, and what the inner strategy is told."""

from __future__ import annotations

import json

import pytest

from ranknas.errors import ConfigError
from ranknas.evaluator.data.schema import DataSchema
from ranknas.evaluator.results import Status
from ranknas.strategies import Constraints, Dedupe, Strategy, drain_infeasible, make_strategy
from ranknas.strategies.wrappers import _num
from ranknas.testing.strategies import (
    enumerate_space,
    run_loop,
    toy_evaluate,
    toy_objectives,
    toy_space,
)

SPACE = toy_space()
ARCHS = enumerate_space(SPACE)


class Scripted(Strategy):
    """Proposes a fixed list of architectures (cycling), and records what it is told."""

    name = "scripted"

    def __init__(self, archs, seed=0) -> None:
        super().__init__(SPACE, toy_objectives(), seed)
        self.archs = list(archs)
        self.told = []

    def ask(self):
        return self._proposal(self.archs[self._next_id % len(self.archs)])

    def tell(self, proposal, result) -> None:
        self.told.append((proposal.trial_id, proposal.arch.arch_id, result.status))


def evaluate(_i, proposal):
    return toy_evaluate(SPACE, proposal.arch)


def flops(arch):
    return SPACE.materialize(arch).flops


# -- Dedupe ------------------------------------------------------------------------------------
def test_dedupe_answers_repeats_from_cache():
    a, b, c = ARCHS[:3]
    inner = Scripted([a, b, a, a, c, b])
    dedupe = Dedupe(inner)
    asked = run_loop(dedupe, 3, evaluate)
    assert [p.arch for p in asked] == [a, b, c]
    assert [p.trial_id for p in asked] == [0, 1, 2]  # renumbered without gaps
    assert [t[:2] for t in inner.told] == [(0, a.arch_id), (1, b.arch_id), (2, a.arch_id),
                                           (3, a.arch_id), (4, c.arch_id)]
    assert dedupe.hits == 2 and set(dedupe.cache) == {a.arch_id, b.arch_id, c.arch_id}


def test_dedupe_stops_when_inner_only_repeats():
    inner = Scripted([ARCHS[0]])
    dedupe = Dedupe(inner, max_repeats=7)
    assert len(run_loop(dedupe, 10, evaluate)) == 1
    assert len(inner.told) == 1 + 7  # the evaluation, then 7 cached answers
    assert dedupe.ask() is None


def test_dedupe_parks_repeats_of_pending_architectures():
    a, b = ARCHS[:2]
    inner = Scripted([a, a, b])
    dedupe = Dedupe(inner)
    first, second = dedupe.ask(), dedupe.ask()
    assert (first.arch, second.arch) == (a, b) and inner.told == []
    dedupe.tell(first, toy_evaluate(SPACE, a))
    assert [t[:2] for t in inner.told] == [(0, a.arch_id), (1, a.arch_id)]


def test_dedupe_state_keeps_cache():
    a, b = ARCHS[:2]
    dedupe = Dedupe(Scripted([a, b]))
    run_loop(dedupe, 2, evaluate)
    state = json.loads(json.dumps(dedupe.state_dict()))
    inner = Scripted([a, b])
    again = Dedupe(inner, max_repeats=3)
    again.load_state_dict(state)
    assert again.ask() is None  # inner (resumed at its 3rd ask) repeats a, b: both cached
    assert [t[1] for t in inner.told] == [a.arch_id, b.arch_id, a.arch_id]


def test_dedupe_validates_max_repeats():
    with pytest.raises(ConfigError, match="max_repeats"):
        Dedupe(Scripted(ARCHS), max_repeats=0)
    with pytest.raises(ConfigError):
        Dedupe("random")


# -- Constraints -------------------------------------------------------------------------------
def test_constraints_reject_before_training_and_drain_for_the_journal():
    bound = sorted(flops(a) for a in ARCHS)[len(ARCHS) // 2]
    inner = Scripted(ARCHS)
    constrained = Constraints(inner, max_flops=bound)
    drained = []
    asked = run_loop(constrained, 20, evaluate, drained)
    assert all(flops(p.arch) <= bound for p in asked)
    assert drained and all(flops(p.arch) > bound for p, _ in drained)
    for proposal, result in drained:
        assert result.status is Status.INFEASIBLE
        assert result.reason == f"flops {_num(flops(proposal.arch))} > max_flops {_num(bound)}"
        assert result.metrics["flops"] == flops(proposal.arch)
    ids = sorted(p.trial_id for p in asked + [p for p, _ in drained])
    assert ids == list(range(len(ids)))  # every inner proposal journaled once
    infeasible = {t[0] for t in inner.told if t[2] is Status.INFEASIBLE}
    assert infeasible == {p.trial_id for p, _ in drained}
    assert constrained.drain_infeasible() == []


def test_constraints_min_flops_and_params_with_schema():
    tiny = DataSchema(13, (3,) * 8, name="tiny")
    params = sorted(SPACE.materialize(a, tiny).params for a in ARCHS)
    constrained = Constraints(Scripted(ARCHS), max_params=params[20], min_flops=2000,
                              schema=tiny)
    for arch in ARCHS:
        rejected = constrained.check(arch)
        graph = SPACE.materialize(arch, tiny)
        assert (rejected is None) == (graph.params <= params[20] and graph.flops >= 2000)
        if rejected is not None:
            assert "max_params" in rejected.reason or "min_flops" in rejected.reason


@pytest.mark.parametrize(("options", "where"), [
    ({}, "constraints"),
    ({"max_flops": -1}, "constraints.max_flops"),
    ({"max_params": "1e6"}, "constraints.max_params"),
    ({"max_flops": 10, "min_flops": 20}, "constraints.min_flops"),
    ({"max_flops": 10, "max_rejects": 0}, "constraints.max_rejects"),
    ({"max_flops": 10, "schema": {"num_dense": 13}}, "constraints.schema"),
])
def test_constraints_config_errors(options, where):
    with pytest.raises(ConfigError) as err:
        Constraints(Scripted(ARCHS), **options)
    assert err.value.where == where


def test_constraints_that_reject_everything_say_so():
    constrained = Constraints(make_strategy("random", SPACE, toy_objectives()), max_flops=1,
                              max_rejects=20)
    with pytest.raises(ConfigError, match="20 proposals in a row"):
        constrained.ask()


@pytest.mark.parametrize("dedupe_outside", [True, False])
def test_stacked_wrappers_journal_each_architecture_once(dedupe_outside):
    bound = sorted(flops(a) for a in ARCHS)[len(ARCHS) // 2]
    inner = make_strategy("random", SPACE, toy_objectives(), seed=0)
    if dedupe_outside:
        stack = Dedupe(Constraints(inner, max_flops=bound), max_repeats=50)
    else:
        stack = Constraints(Dedupe(inner, max_repeats=50), max_flops=bound)
    drained = []
    asked = run_loop(stack, 100, evaluate, drained)
    journal = asked + [p for p, _ in drained]
    assert len({p.arch.arch_id for p in journal}) == len(journal) == len(ARCHS)
    assert sorted(p.trial_id for p in journal) == list(range(len(ARCHS)))


def test_drain_of_plain_strategy_is_empty():
    assert drain_infeasible(make_strategy("random", SPACE, toy_objectives())) == []


@pytest.mark.parametrize(("value", "text"), [(3_100_000, "3.1e6"), (2e6, "2e6"), (512, "512"),
                                             (1.5e-5, "1.5e-5")])
def test_number_format(value, text):
    assert _num(value) == text
