"""Random search: independent uniform draws from the space, the baseline every NAS must beat."""

from __future__ import annotations

from collections.abc import Sequence

from ranknas.errors import ConfigError
from ranknas.evaluator.results import EvalResult, Objective
from ranknas.spaces.space import SearchSpace
from ranknas.strategies.base import Proposal, Strategy
from ranknas.strategies.registry import register_strategy


@register_strategy
class RandomSearch(Strategy):
    """Random search: every proposal an independent draw of ``space.sample``.

    Args:
        space: The search space.
        objectives: What to optimise (unused: random search ignores results).
        seed: Seeds the draws.
        max_trials: Stop (``ask`` returns None) after this many proposals; None = never stop,
            the search loop's budget decides.
    """

    name = "random"

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 max_trials: int | None = None) -> None:
        super().__init__(space, objectives, seed)
        if max_trials is not None and max_trials < 1:
            raise ConfigError("strategies[].max_trials",
                              f"expected a positive integer or null, got {max_trials}")
        self.max_trials = max_trials

    def ask(self) -> Proposal | None:
        if self.max_trials is not None and self._next_id >= self.max_trials:
            return None
        return self._proposal(self.space.sample(self.rng))

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """Nothing to learn."""

