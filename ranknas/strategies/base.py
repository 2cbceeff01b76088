"""The Strategy plugin interface, shaped after Optuna's ``BaseSampler``.

Call order, driven by the search loop (``ranknas.search``)::

    strategy = make_strategy(name, space, objectives, seed=..., **options)
    strategy.attach(job)                                   # optional hook: the run's data
    while (proposal := strategy.ask()) is not None:        # None: the strategy is done
        result = executor.evaluate(proposal)               # EvalResult, never an exception
        strategy.tell(proposal, result)                    # failed/infeasible results too
    state = strategy.state_dict()                          # JSON-able, for resume

Several proposals may be outstanding at once (parallel executors): ``ask`` may be called again
before the previous proposal is told. A strategy owns its random generator, seeded in
``__init__``; it never touches global random state and never imports Ray or MLflow.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from ranknas.errors import ConfigError
from ranknas.evaluator.results import EvalResult, Objective
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.space import SearchSpace


@dataclass(frozen=True)
class Proposal:
    """An architecture to evaluate, with its place in the strategy's sequence.

    Args:
        arch: The architecture.
        trial_id: 0, 1, 2, ... in ask order, per strategy.
        budget_examples: Training examples to spend on it; None = the run's default.
        meta: Strategy-specific notes (JSON-able), e.g. the parent of a mutation.
            ``meta["cost_examples"]``: training examples the strategy itself processed since
            its previous proposal (supernet training, fine-tuning); the loop charges them to
            the run's budget, so one-shot and sampling-based runs compare at equal examples.
    """

    arch: Architecture
    trial_id: int
    budget_examples: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


class Strategy(ABC):
    """Base class of every NAS strategy.

    Args:
        space: The search space; strategies see it only through ``choices()``, ``sample``,
            ``mutate``, ``canonicalize`` and ``validate``.
        objectives: What to optimise, in order; the first is the primary one.
        seed: Seeds the strategy's own generator.
    """

    #: Name in the registry (``ranknas strategies list``).
    name: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0
                 ) -> None:
        if not objectives:
            raise ConfigError("objectives", "a strategy needs at least one objective")
        self.space = space
        self.objectives = tuple(objectives)
        self.seed = seed
        self.rng = random.Random(seed)
        self._next_id = 0

    def _proposal(self, arch: Architecture, **kwargs: Any) -> Proposal:
        proposal = Proposal(arch, self._next_id, **kwargs)
        self._next_id += 1
        return proposal

    def attach(self, job: Any) -> None:  # noqa: B027 - optional hook, no-op by default
        """Receive the run's evaluation job (``EvalJob``: space, data, training settings)
        before the first ``ask``. Strategies that train models themselves (one-shot) use it."""

    def constrain(self, wrap: Callable[[Strategy], Strategy]) -> None:  # noqa: B027
        """Receive the study's constraints as a wrapper factory (``Constraints`` calls this
        on the strategy it wraps). Strategies that run a search of their own inside (one-shot)
        wrap their inner strategy with it, so internal candidates obey the bounds too."""

    def summary(self) -> dict[str, Any] | None:
        """Optional: a JSON-able account of work done outside the trials (e.g. one-shot's
        supernet training and candidate scores); the loop saves it to
        ``OUT/strategies/<label>.json`` and attaches it to the MLflow parent run, and logs
        its ``"metrics"`` entry, ``{name: [[step, value], ...]}``, as parent-run metrics
        ``<label>.<name>``. None here."""
        return None

    @abstractmethod
    def ask(self) -> Proposal | None:
        """The next architecture to evaluate, or None when the strategy has nothing left."""

    @abstractmethod
    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """Report the result of a proposal (any status)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; subclasses extend it with their own."""
        return {"rng": _rng_to_json(self.rng), "next_id": self._next_id}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.setstate(_rng_from_json(state["rng"]))
        self._next_id = int(state["next_id"])


def _rng_to_json(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from_json(state: Sequence) -> tuple:
    return (state[0], tuple(state[1]), state[2])
