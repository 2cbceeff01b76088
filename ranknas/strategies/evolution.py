"""Regularized (aging) evolution, Real et al. 2019, "Regularized Evolution for Image Classifier
Architecture Search", with an NSGA-II style multi-objective mode.

The algorithm, in ask/tell form:

- The first ``population`` proposals are random draws (``space.sample``).
- After that, each proposal samples ``sample_size`` members of the *alive population* uniformly
  without replacement (a tournament); the best of them is the parent, and the proposal is
  ``space.mutate(parent)``.
- Every told result joins the alive population in tell order; when the population is over
  ``population`` members, the oldest one dies (aging), whatever its score.
- Failed, infeasible and pruned results (and ok results lacking an objective value) join the
  population like any other, so they age out in turn, but they count as worst: they never win a
  tournament. A tournament without one usable member falls back to a random draw, as does a
  proposal asked while no result has been told yet: proposals may be outstanding (``ask``
  before ``tell``) in any number.

Single objective: the tournament winner has the best value (ties: first drawn).
Several objectives: every usable member of the alive population gets a Pareto rank by
non-dominated sorting and a crowding distance within its front (NSGA-II, Deb et al. 2002); the
tournament winner is the member of lowest rank, then largest crowding distance (crowded-
comparison operator). Directions are honoured through ``Objective.sign``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ranknas.errors import ConfigError, SpaceError
from ranknas.evaluator.dominance import crowding_distances, pareto_ranks
from ranknas.evaluator.results import EvalResult, Objective
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.space import SearchSpace
from ranknas.strategies.base import Proposal, Strategy
from ranknas.strategies.registry import register_strategy


@dataclass(frozen=True)
class Member:
    """One told architecture of the alive population.

    Attributes:
        arch: The architecture.
        key: Objective values turned to minimisation (``sign * value``), or None when the
            result was not usable (failed, infeasible, pruned, missing or non-finite values).
    """

    arch: Architecture
    key: tuple[float, ...] | None


@register_strategy
class RegularizedEvolution(Strategy):
    """Regularized (aging) evolution: tournament parents, mutation, the oldest member dies.

    Args:
        space: The search space.
        objectives: What to optimise; with more than one, tournaments compare Pareto rank
            then crowding distance (NSGA-II style).
        seed: Seeds the strategy's generator (draws, tournaments, mutations).
        population: Size of the alive population, and number of initial random proposals.
        sample_size: Members drawn per tournament (1 = random parent; ``population`` =
            always the best).
    """

    name = "evolution"

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 population: int = 32, sample_size: int = 8) -> None:
        super().__init__(space, objectives, seed)
        if population < 2:
            raise ConfigError("strategies[].population", f"expected an integer >= 2, got "
                              f"{population}")
        if not 1 <= sample_size <= population:
            raise ConfigError("strategies[].sample_size", f"expected an integer from 1 to "
                              f"population ({population}), got {sample_size}")
        self.population = population
        self.sample_size = sample_size
        self.members: deque[Member] = deque()

    # -- ask/tell -------------------------------------------------------------------------
    def ask(self) -> Proposal:
        if self._next_id >= self.population:
            parent = self._tournament()
            if parent is not None:
                try:
                    child = self.space.mutate(parent.arch, self.rng)
                except SpaceError:  # a space without any valid neighbour of the parent
                    child = None
                if child is not None:
                    return self._proposal(child, meta={"origin": "mutation",
                                                       "parent": parent.arch.arch_id})
        return self._proposal(self.space.sample(self.rng), meta={"origin": "random"})

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        values = result.values(self.objectives)
        key = None if values is None else tuple(
            o.sign() * v for o, v in zip(self.objectives, values, strict=True))
        self.members.append(Member(proposal.arch, key))
        while len(self.members) > self.population:
            self.members.popleft()  # aging: the oldest dies, however good

    def _tournament(self) -> Member | None:
        """The best of ``sample_size`` random alive members; None if none is usable."""
        members = list(self.members)
        if not members:
            return None
        drawn = self.rng.sample(range(len(members)), min(self.sample_size, len(members)))
        usable = [i for i in drawn if members[i].key is not None]
        if not usable:
            return None
        if len(self.objectives) == 1:
            best = min(usable, key=lambda i: members[i].key)
        else:
            fitness = self._pareto_fitness(members)
            best = min(usable, key=fitness.__getitem__)
        return members[best]

    @staticmethod
    def _pareto_fitness(members: Sequence[Member]) -> dict[int, tuple[int, float]]:
        """Index -> (Pareto rank, -crowding distance) over the usable members."""
        idx = [i for i, m in enumerate(members) if m.key is not None]
        points = [members[i].key for i in idx]
        ranks = pareto_ranks(points)
        crowd = crowding_distances(points, ranks)
        return {i: (r, -c) for i, r, c in zip(idx, ranks, crowd, strict=True)}

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["members"] = [{"arch": m.arch.to_json(),
                             "key": None if m.key is None else list(m.key)}
                            for m in self.members]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.members = deque(
            Member(self.space.from_json(m["arch"], where="state.members[].arch"),
                   None if m["key"] is None else tuple(float(v) for v in m["key"]))
            for m in state["members"])
