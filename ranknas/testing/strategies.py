"""The strategy conformance suite: checks every ranknas strategy passes, plugins included.

Use it from a test module of your own (pytest collects the inherited tests)::

    from ranknas.testing.strategies import StrategyConformance

    class TestMine(StrategyConformance):
        strategy_name = "mine"                  # made with make_strategy(name, ...)
        strategy_options = {"population": 8}    # optional

or, for a strategy that is not registered (or needs wrapping), override the fixture::

    class TestMine(StrategyConformance):
        @pytest.fixture
        def strategy_factory(self):
            return lambda space, objectives, seed: MyStrategy(space, objectives, seed=seed)

The suite runs on :func:`toy_space` (28 architectures, with inactive decisions and a subset
choice) with :func:`toy_evaluate`, a deterministic objective of the architecture: ``ne`` is a sum
of per-decision penalties with a unique optimum (:func:`toy_optimum`), ``flops`` and ``params``
come from ``space.materialize``. The search loop it runs drains ``drain_infeasible`` after every
ask, as the real loop does.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pytest

from ranknas.errors import InvalidArchitecture
from ranknas.evaluator.data.schema import DataSchema
from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.graph import AnyOf, Block, Fixed, OperatorGraph
from ranknas.spaces.space import SearchSpace
from ranknas.strategies.base import Proposal, Strategy
from ranknas.strategies.registry import make_strategy
from ranknas.strategies.wrappers import drain_infeasible

#: ``factory(space, objectives, seed) -> Strategy``: what the suite tests.
StrategyFactory = Callable[[SearchSpace, Sequence[Objective], int], Strategy]
ResultFn = Callable[[int, Proposal], EvalResult]

TOY_SCHEMA = DataSchema(13, (10, 20, 5, 8, 30, 4, 12, 6), name="toy")

#: Toy ``ne`` penalty of each (decision, value); ``ne = 0.4 + sum over active decisions``.
TOY_PENALTIES: Mapping[str, Mapping[Any, float]] = {
    "b1.op": {"linear-2d": 0.0, "concat": 0.03},
    "b1.width": {16: 0.02, 32: 0.0},
    "b2.op": {"linear-2d": 0.015, "dcn-cross": 0.0},
    "b2.x": {("b1",): 0.0, ("dense",): 0.05, ("b1", "dense"): 0.01},
    "b3.on": {True: 0.0, False: 0.025},
}


@functools.cache
def toy_space() -> SearchSpace:
    """Three blocks, 28 architectures: ``b1`` (linear-2d of width 16/32, or a width-less
    concat), ``b2`` (linear-2d or dcn-cross over any non-empty subset of {b1, dense}; with
    ``dense`` alone, b1's decisions are inactive) and an optional FM block ``b3``."""
    blocks = [
        Block("b1", ("linear-2d", "concat"), (16, 32), inputs={"x": Fixed(("dense", "sparse"))}),
        Block("b2", ("linear-2d", "dcn-cross"), (32,), inputs={"x": AnyOf(("b1", "dense"))}),
        Block("b3", ("fm",), None, inputs={"x": Fixed(("sparse",))}, optional=True),
    ]
    return SearchSpace("toy", OperatorGraph(blocks, ("b2", "b3")), version="1",
                       default_schema=TOY_SCHEMA, description="conformance toy space")


def toy_objectives(count: int = 1) -> tuple[Objective, ...]:
    """``(ne,)`` or ``(ne, flops)``, both minimised."""
    names = ("ne", "flops")[:count]
    return tuple(Objective.named(n) for n in names)


def toy_ne(arch: Architecture) -> float:
    """The toy objective: lower is better; unique minimum 0.4 at :func:`toy_optimum`."""
    return 0.4 + sum(TOY_PENALTIES[name][value] for name, value in arch.choices)


def toy_evaluate(space: SearchSpace, arch: Architecture) -> EvalResult:
    """An ok result with ``ne`` (:func:`toy_ne`), ``flops`` and ``params``; no training."""
    graph = space.materialize(arch)
    return EvalResult(arch.arch_id, Status.OK, {"ne": toy_ne(arch), "flops": graph.flops,
                                                "params": graph.params},
                      examples=1000, seconds=0.01)


def enumerate_space(space: SearchSpace) -> list[Architecture]:
    """Every distinct valid architecture of a (small) space, in a stable order."""
    choices = space.choices()
    seen: dict[str, Architecture] = {}
    for combo in itertools.product(*(c.values() for c in choices)):
        try:
            arch = space.canonicalize(dict(zip((c.name for c in choices), combo, strict=True)))
            space.materialize(arch)
        except InvalidArchitecture:
            continue
        seen.setdefault(arch.arch_id, arch)
    return list(seen.values())


@functools.cache
def toy_optimum() -> Architecture:
    """The unique minimiser of :func:`toy_ne` over :func:`toy_space`."""
    ranked = sorted(enumerate_space(toy_space()), key=toy_ne)
    if toy_ne(ranked[0]) == toy_ne(ranked[1]):
        raise RuntimeError("toy objective has no unique optimum")
    return ranked[0]


def run_loop(strategy: Strategy, rounds: int, result_fn: ResultFn,
             drained: list[tuple[Proposal, EvalResult]] | None = None) -> list[Proposal]:
    """The search loop in miniature: ask, drain infeasible, evaluate, tell; stops at None.

    Returns the proposals asked; drained (proposal, result) pairs go to ``drained``.
    """
    asked: list[Proposal] = []
    for i in range(rounds):
        proposal = strategy.ask()
        rejected = drain_infeasible(strategy)
        if drained is not None:
            drained.extend(rejected)
        if proposal is None:
            break
        asked.append(proposal)
        strategy.tell(proposal, result_fn(i, proposal))
    return asked


def _toy_result(space: SearchSpace) -> ResultFn:
    return lambda _i, p: toy_evaluate(space, p.arch)


def _check_proposal(space: SearchSpace, proposal: Any) -> None:
    assert isinstance(proposal, Proposal), f"ask() returned {proposal!r}, not a Proposal"
    space.validate(proposal.arch)  # raises InvalidArchitecture naming the decision at fault
    assert isinstance(proposal.trial_id, int)
    assert proposal.budget_examples is None or proposal.budget_examples > 0
    json.dumps(dict(proposal.meta))  # meta must be JSON-able


class StrategyConformance:
    """Tests every strategy passes. Subclass it as ``Test...``; see the module docstring.

    Attributes:
        strategy_name: Registry name the default ``strategy_factory`` fixture makes.
        strategy_options: Options passed to ``make_strategy``.
        rounds: Ask/tell rounds of the short checks.
        optimum_budget: Proposals allowed to find the toy optimum (random search needs ~100).
        searches_told_results: False for a strategy that ranks by scores of its own (one-shot
            ranks by its supernet) and proposes a finite plan: instead of finding the toy
            optimum it must propose distinct architectures and then stop (``ask()`` returns
            None) within ``optimum_budget``.
    """

    strategy_name: ClassVar[str] = ""
    strategy_options: ClassVar[Mapping[str, Any]] = {}
    rounds: ClassVar[int] = 30
    optimum_budget: ClassVar[int] = 150
    searches_told_results: ClassVar[bool] = True

    @pytest.fixture
    def strategy_factory(self) -> StrategyFactory:
        """Override this fixture to test a strategy that is not made by name."""
        if not self.strategy_name:
            pytest.fail("set `strategy_name` or override the `strategy_factory` fixture")

        def factory(space: SearchSpace, objectives: Sequence[Objective],
                    seed: int) -> Strategy:
            return make_strategy(self.strategy_name, space, objectives, seed=seed,
                                 **self.strategy_options)
        return factory

    def test_proposes_only_valid_architectures(self, strategy_factory: StrategyFactory
                                               ) -> None:
        space = toy_space()
        drained: list[tuple[Proposal, EvalResult]] = []
        asked = run_loop(strategy_factory(space, toy_objectives(), 0), self.rounds,
                         _toy_result(space), drained)
        assert asked, "the first ask() returned None"
        for proposal in asked + [p for p, _ in drained]:
            _check_proposal(space, proposal)
        for _, result in drained:
            assert result.status is Status.INFEASIBLE and result.reason
        ids = [p.trial_id for p in asked + [p for p, _ in drained]]
        assert len(set(ids)) == len(ids), f"trial ids repeat: {sorted(ids)}"

    def test_deterministic_under_seed(self, strategy_factory: StrategyFactory) -> None:
        space = toy_space()

        def sequence(seed: int) -> list[str]:
            strategy = strategy_factory(space, toy_objectives(), seed)
            return [p.arch.arch_id for p in run_loop(strategy, self.rounds,
                                                     _toy_result(space))]

        first = sequence(0)
        assert first == sequence(0), "same seed, different proposals"
        assert first != sequence(1), "different seeds, same proposals"

    def test_accepts_failed_and_infeasible_results(self, strategy_factory: StrategyFactory
                                                   ) -> None:
        space = toy_space()

        def result(i: int, proposal: Proposal) -> EvalResult:
            aid = proposal.arch.arch_id
            graph = space.materialize(proposal.arch)
            kind = i % 4 if i >= 8 else 1 + i % 3  # 8 rounds with no usable result first
            if kind == 1:
                return EvalResult(aid, Status.FAILED, reason="training diverged: loss is nan")
            if kind == 2:
                return EvalResult(aid, Status.INFEASIBLE, {"flops": graph.flops},
                                  reason="flops 3.1e6 > max_flops 2e6")
            if kind == 3:
                return EvalResult(aid, Status.PRUNED, {"flops": graph.flops},
                                  reason="stopped early")
            return toy_evaluate(space, proposal.arch)

        for objectives in (toy_objectives(1), toy_objectives(2)):
            asked = run_loop(strategy_factory(space, objectives, 0), self.rounds, result)
            assert len(asked) >= 8, "stopped asking after failed results"
            for proposal in asked:
                _check_proposal(space, proposal)

    def test_allows_pending_proposals(self, strategy_factory: StrategyFactory) -> None:
        space = toy_space()
        strategy = strategy_factory(space, toy_objectives(), 0)
        for _ in range(5):
            batch = [p for p in (strategy.ask() for _ in range(3)) if p is not None]
            drain_infeasible(strategy)
            for proposal in batch:
                _check_proposal(space, proposal)
            for proposal in reversed(batch):
                strategy.tell(proposal, toy_evaluate(space, proposal.arch))

    def test_state_dict_round_trips(self, strategy_factory: StrategyFactory) -> None:
        space = toy_space()
        objectives = toy_objectives()
        original = strategy_factory(space, objectives, 3)
        run_loop(original, 12, _toy_result(space))
        state = json.loads(json.dumps(original.state_dict()))
        resumed = strategy_factory(space, objectives, 3)
        resumed.load_state_dict(state)
        after = [p.arch.arch_id for p in run_loop(original, 10, _toy_result(space))]
        again = [p.arch.arch_id for p in run_loop(resumed, 10, _toy_result(space))]
        assert again == after, "a resumed strategy proposes other architectures"

    def test_finds_optimum_of_toy_space(self, strategy_factory: StrategyFactory) -> None:
        space = toy_space()
        target = toy_optimum().arch_id
        strategy = strategy_factory(space, toy_objectives(), 0)
        if not self.searches_told_results:
            asked = run_loop(strategy, self.optimum_budget, _toy_result(space))
            ids = [p.arch.arch_id for p in asked]
            assert len(set(ids)) == len(ids), "a finite plan proposed an architecture twice"
            assert len(asked) < self.optimum_budget, "a finite plan did not stop"
            assert strategy.ask() is None, "ask() after the plan's end returned a proposal"
            return
        best, asked = math.inf, 0
        while asked < self.optimum_budget:
            proposal = strategy.ask()
            drain_infeasible(strategy)
            if proposal is None:
                break
            asked += 1
            result = toy_evaluate(space, proposal.arch)
            best = min(best, result.metrics["ne"])
            if proposal.arch.arch_id == target:
                return
            strategy.tell(proposal, result)
        pytest.fail(f"optimum ne={toy_ne(toy_optimum()):.3f} not found in {asked} proposals "
                    f"(budget {self.optimum_budget}); best ne={best:.3f}")

    def test_handles_two_objectives(self, strategy_factory: StrategyFactory) -> None:
        space = toy_space()
        strategy = strategy_factory(space, toy_objectives(2), 0)
        asked = run_loop(strategy, self.rounds, _toy_result(space))
        assert asked, "the first ask() returned None"
        for proposal in asked:
            _check_proposal(space, proposal)
        json.dumps(strategy.state_dict())
