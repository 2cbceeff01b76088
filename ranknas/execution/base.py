"""Executors drive the ask -> evaluate -> tell loop of one strategy run under a budget.

The loop belongs to the executor because Ray Tune insists on owning it (it calls its searcher's
``suggest``); the local executor runs the same loop in process. Either way the strategy only
sees ``ask``/``tell``, and every finished trial reaches ``on_result`` in the driver process,
which journals and tracks it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ranknas.errors import ConfigError
from ranknas.evaluator.results import EvalResult
from ranknas.strategies.base import Proposal, Strategy

OnResult = Callable[[Proposal, EvalResult], None]


@dataclass
class Budget:
    """A run's budget: trials and/or training examples processed (whichever ends first).

    ``used_*`` start at what a resumed run already spent.
    """

    trials: int | None = None
    examples: int | None = None
    used_trials: int = 0
    used_examples: int = 0

    def __post_init__(self) -> None:
        if self.trials is None and self.examples is None:
            raise ConfigError("budget", "set trials and/or examples")

    def spend(self, result: EvalResult, cost_examples: int = 0) -> None:
        """Count a finished trial and its examples, plus the strategy's own ``cost_examples``."""
        self.used_trials += 1
        self.used_examples += result.examples + cost_examples

    @property
    def exhausted(self) -> bool:
        return ((self.trials is not None and self.used_trials >= self.trials)
                or (self.examples is not None and self.used_examples >= self.examples))


@dataclass(frozen=True)
class EvalJob:
    """Everything a worker needs to evaluate a proposal, as plain picklable data.

    Built in the driver; the space, data and evaluator are rebuilt lazily in whichever process
    calls it (and cached there), so Ray workers regenerate synthetic data from its seed instead
    of shipping tensors.
    """

    space: str
    data: dict[str, Any]
    train: dict[str, Any]
    seed: int = 0
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def evaluator(self, data: Any = None) -> Any:
        """The job's ``StandaloneEvaluator``, built on first call and cached.

        Args:
            data: The job's dataset, already loaded (a process pool hands its workers the
                driver's, in shared memory); None: load it from ``self.data``.
        """
        if "evaluator" not in self._cache:
            from ranknas.evaluator.data import load_data
            from ranknas.evaluator.training import TrainConfig
            from ranknas.execution.standalone import StandaloneEvaluator
            from ranknas.spaces import load_space

            if data is None:
                data_opts = dict(self.data)
                data = load_data(data_opts.pop("spec"), **data_opts)
            self._cache["evaluator"] = StandaloneEvaluator(
                load_space(self.space), data, TrainConfig(**self.train), seed=self.seed)
        return self._cache["evaluator"]

    def __call__(self, proposal: Proposal) -> EvalResult:
        return self.evaluator()(proposal.arch, proposal.budget_examples)

    def __getstate__(self) -> dict:
        return {"space": self.space, "data": self.data, "train": self.train, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_cache", {})


def cost_examples(proposal: Proposal) -> int:
    """Examples the strategy spent itself before this proposal (``meta["cost_examples"]``)."""
    return int(proposal.meta.get("cost_examples", 0))


def drain_infeasible(strategy: Strategy, on_result: OnResult) -> None:
    """Report trials a constraints wrapper rejected before training (they cost no budget)."""
    from ranknas.strategies.wrappers import drain_infeasible as drain

    for proposal, result in drain(strategy):
        on_result(proposal, result)


class Executor(ABC):
    """Runs one strategy until it stops asking or the budget is spent."""

    @abstractmethod
    def run(self, strategy: Strategy, job: Callable[[Proposal], EvalResult], budget: Budget,
            on_result: OnResult) -> None:
        """Ask, evaluate, tell and report each trial through ``on_result`` (driver side)."""

    def close(self) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Release workers."""


class LocalExecutor(Executor):
    """Evaluates one proposal at a time in this process."""

    def run(self, strategy: Strategy, job: Callable[[Proposal], EvalResult], budget: Budget,
            on_result: OnResult) -> None:
        while not budget.exhausted:
            proposal = strategy.ask()
            drain_infeasible(strategy, on_result)
            if proposal is None:
                return
            result = job(proposal)
            strategy.tell(proposal, result)
            budget.spend(result, cost_examples(proposal))
            on_result(proposal, result)
