"""Every registered strategy, and each wrapped once, passes the conformance suite."""

from __future__ import annotations

import functools

import pytest

from ranknas.strategies import Constraints, Dedupe, available_strategies, make_strategy
from ranknas.testing.strategies import (
    TOY_SCHEMA,
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
        if name == "oneshot":  # needs attach(job): TestOneShot below
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


#: Small enough for seconds per strategy. top_k 20: the suite wants 8+ proposals, and its
#: state check resumes after 12, so some retrain proposals must still be queued then.
ONESHOT = {"supernet_examples": 512, "candidates": 40, "top_k": 20, "finetune": "last",
           "finetune_examples": 64, "inner_options": {"population": 4, "sample_size": 2}}


@functools.cache
def _toy_evaluator():
    from ranknas.evaluator.data.synthetic import make_synthetic
    from ranknas.evaluator.training import TrainConfig
    from ranknas.execution.standalone import StandaloneEvaluator

    data = make_synthetic(600, 0, num_dense=TOY_SCHEMA.num_dense,
                          cardinalities=TOY_SCHEMA.cardinalities)
    return StandaloneEvaluator(toy_space(), data, TrainConfig(examples=256, batch_size=64))


class _ToyJob:
    """The search loop's job for the toy space: tiny synthetic data of its schema."""

    def evaluator(self):
        return _toy_evaluator()


TOY_JOB = _ToyJob()


@pytest.mark.usefixtures("one_thread")
class TestOneShot(StrategyConformance):
    """One-shot, plain and wrapped, attached to the toy job. It ranks by its supernet's scores,
    not by the told toy objective, so the suite checks its finite plan instead of the optimum."""

    searches_told_results = False

    @pytest.fixture(params=["plain", "dedupe-constraints"])
    def strategy_factory(self, request):
        def make(space, objectives, seed):
            strategy = make_strategy("oneshot", space, objectives, seed=seed, **ONESHOT)
            if request.param == "dedupe-constraints":
                strategy = Constraints(Dedupe(strategy, max_repeats=20),
                                       max_flops=_flops_bound())
            strategy.attach(TOY_JOB)
            return strategy
        return make
