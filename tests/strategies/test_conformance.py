"""Every registered strategy, and each wrapped once, passes the conformance suite."""

from __future__ import annotations

import functools

import pytest

from ranknas.strategies import Constraints, Dedupe, available_strategies, make_strategy
from ranknas.testing.strategies import (
    StrategyConformance,
    enumerate_space,
    toy_evaluate,
    toy_optimum,
    toy_space,
)

#: Option variants per strategy name; a strategy not listed runs once with its defaults.
VARIANTS = {
    "optuna": {"TPESampler": {"sampler": "TPESampler"},
               "NSGAIISampler": {"sampler": "NSGAIISampler",
                                 "sampler_options": {"population_size": 16}}},
}


@functools.cache
def _flops_bound() -> float:
    """A max_flops that rejects a share of the toy space but keeps its optimum."""
    space = toy_space()
    flops = sorted(toy_evaluate(space, a).metrics["flops"] for a in enumerate_space(space))
    optimum = toy_evaluate(space, toy_optimum()).metrics["flops"]
    bound = max(flops[len(flops) * 3 // 4], optimum)
    assert flops[-1] > bound, "the constraint would reject nothing"
    return bound


def _make(name, options, space, objectives, seed):
    return make_strategy(name, space, objectives, seed=seed, **options)


def _cases():
    cases = []
    for name in available_strategies():
        if name == "oneshot":  # needs attach(job); covered by tests/strategies/test_oneshot.py
            continue
        for label, options in VARIANTS.get(name, {"default": {}}).items():
            make = functools.partial(_make, name, options)
            cases.append(pytest.param(make, id=f"{name}-{label}"))
            cases.append(pytest.param(
                lambda space, objs, seed, make=make: Constraints(
                    Dedupe(make(space, objs, seed), max_repeats=20), max_flops=_flops_bound()),
                id=f"{name}-{label}-dedupe-constraints"))
    return cases


class TestRegisteredStrategies(StrategyConformance):
    @pytest.fixture(params=_cases())
    def strategy_factory(self, request):
        return request.param


class TestByName(StrategyConformance):
    """The documented plugin-author pattern: only a name."""

    strategy_name = "random"
