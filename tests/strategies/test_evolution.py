"""Regularized evolution: random start, tournaments, aging, failures, Pareto selection."""

from __future__ import annotations

import math

import pytest

from ranknas.evaluator.dominance import crowding_distances, pareto_ranks
from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.strategies.evolution import Member, RegularizedEvolution
from ranknas.testing.strategies import (
    enumerate_space,
    toy_evaluate,
    toy_ne,
    toy_objectives,
    toy_space,
)


def ok(arch, **metrics):
    return EvalResult(arch.arch_id, Status.OK, metrics)


def test_first_population_is_random_then_mutations_of_alive_members():
    space = toy_space()
    evo = RegularizedEvolution(space, toy_objectives(), seed=0, population=6, sample_size=3)
    for i in range(20):
        p = evo.ask()
        if i < 6:
            assert p.meta["origin"] == "random"
        else:
            assert p.meta["origin"] == "mutation"
            alive = {m.arch.arch_id for m in evo.members}
            assert p.meta["parent"] in alive and p.arch.arch_id != p.meta["parent"]
        evo.tell(p, toy_evaluate(space, p.arch))


def test_aging_kills_the_oldest_even_when_best():
    space = toy_space()
    archs = sorted(enumerate_space(space), key=toy_ne)
    evo = RegularizedEvolution(space, toy_objectives(), seed=0, population=3, sample_size=3)
    for arch in archs[:4]:  # the best arrives first, so it is the oldest
        evo.tell(evo._proposal(arch), toy_evaluate(space, arch))
    assert [m.arch for m in evo.members] == archs[1:4]


def test_tournament_of_whole_population_picks_the_best():
    space = toy_space()
    archs = enumerate_space(space)
    evo = RegularizedEvolution(space, toy_objectives(), seed=1, population=5, sample_size=5)
    for arch in archs[:5]:
        evo.tell(evo._proposal(arch), toy_evaluate(space, arch))
    best = min(archs[:5], key=toy_ne)
    for _ in range(10):
        assert evo._tournament().arch == best


def test_maximised_objective_is_honoured():
    space = toy_space()
    archs = enumerate_space(space)[:4]
    evo = RegularizedEvolution(space, [Objective.named("auc")], seed=0, population=4,
                               sample_size=4)
    for k, arch in enumerate(archs):
        evo.tell(evo._proposal(arch), ok(arch, auc=0.5 + k / 100))
    assert evo._tournament().arch == archs[-1]


def test_failed_members_never_become_parents_but_age():
    space = toy_space()
    archs = enumerate_space(space)
    evo = RegularizedEvolution(space, toy_objectives(), seed=0, population=4, sample_size=4)
    for arch in archs[:3]:
        evo.tell(evo._proposal(arch), EvalResult(arch.arch_id, Status.FAILED, reason="nan"))
    assert evo._tournament() is None  # nobody usable: ask falls back to a random draw
    evo.tell(evo._proposal(archs[3]), EvalResult(archs[3].arch_id, Status.INFEASIBLE,
                                                 reason="flops"))
    evo.tell(evo._proposal(archs[4]), toy_evaluate(space, archs[4]))
    assert len(evo.members) == 4 and evo.members[0].arch == archs[1]
    evo._next_id = 10
    for _ in range(5):
        p = evo.ask()
        assert p.meta == {"origin": "mutation", "parent": archs[4].arch_id}
    # A missing objective value counts as failed too.
    evo.tell(evo._proposal(archs[5]), ok(archs[5], flops=3.0))
    assert evo.members[-1].key is None


def test_pending_asks_beyond_population_fall_back_to_random():
    evo = RegularizedEvolution(toy_space(), toy_objectives(), seed=0, population=4,
                               sample_size=2)
    assert all(evo.ask().meta["origin"] == "random" for _ in range(10))


def test_nondominated_ranks_and_crowding():
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (6, 6)]
    assert pareto_ranks(points) == [0, 0, 0, 1, 2, 3]
    crowd = crowding_distances(points, pareto_ranks(points))
    assert crowd[0] == crowd[2] == math.inf and crowd[1] == pytest.approx(2.0)
    assert crowd[3] == crowd[4] == crowd[5] == math.inf  # fronts of one
    assert pareto_ranks([(1, 1), (1, 1)]) == [0, 0]  # equal points: no domination


def test_multi_objective_tournament_prefers_rank_then_crowding():
    space = toy_space()
    archs = enumerate_space(space)[:5]
    evo = RegularizedEvolution(space, toy_objectives(2), seed=0, population=5, sample_size=5)
    keys = [(3.0, 3.0), (1.0, 5.0), (2.0, 2.0), (5.0, 1.0), (1.5, 3.5)]
    evo.members.extend(Member(a, k) for a, k in zip(archs, keys, strict=True))
    fitness = evo._pareto_fitness(list(evo.members))
    assert fitness[0][0] == 1 and all(fitness[i][0] == 0 for i in (1, 2, 3, 4))
    assert evo._tournament().arch in (archs[1], archs[3])  # extremes: infinite crowding
    evo.sample_size = 2
    evo.members = type(evo.members)(Member(a, k) for a, k in
                                    zip(archs[:2], [(3.0, 3.0), (2.0, 2.0)], strict=True))
    assert evo._tournament().arch == archs[1]  # rank 0 beats rank 1


def test_state_keeps_population():
    space = toy_space()
    evo = RegularizedEvolution(space, toy_objectives(2), seed=0, population=4, sample_size=2)
    for _ in range(6):
        p = evo.ask()
        evo.tell(p, toy_evaluate(space, p.arch))
    again = RegularizedEvolution(space, toy_objectives(2), seed=0, population=4, sample_size=2)
    again.load_state_dict(evo.state_dict())
    assert list(again.members) == list(evo.members)
