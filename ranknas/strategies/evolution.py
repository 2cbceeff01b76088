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

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ranknas.errors import ConfigError, SpaceError
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
        ranks = nondominated_ranks(points)
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


# -- Pareto helpers (minimisation) ------------------------------------------------------------
def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (all minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True))


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Pareto rank of each point by fast non-dominated sorting: 0 = the front, 1 = the front
    once rank 0 is removed, ... (Deb et al. 2002; O(M N^2))."""
    n = len(points)
    dominated_by = [0] * n  # how many points dominate i
    dominating: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominating[i].append(j)
                dominated_by[j] += 1
            elif dominates(points[j], points[i]):
                dominating[j].append(i)
                dominated_by[i] += 1
    ranks = [0] * n
    front = [i for i in range(n) if dominated_by[i] == 0]
    rank = 0
    while front:
        nxt = []
        for i in front:
            ranks[i] = rank
            for j in dominating[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        front, rank = nxt, rank + 1
    return ranks


def crowding_distances(points: Sequence[Sequence[float]], ranks: Sequence[int]) -> list[float]:
    """NSGA-II crowding distance of each point within its front: the sum over objectives of
    the normalised gap between its neighbours; a front's extremes get infinity."""
    out = [0.0] * len(points)
    fronts: dict[int, list[int]] = {}
    for i, r in enumerate(ranks):
        fronts.setdefault(r, []).append(i)
    for members in fronts.values():
        if len(members) <= 2:
            for i in members:
                out[i] = math.inf
            continue
        for k in range(len(points[members[0]])):
            order = sorted(members, key=lambda i: points[i][k])
            lo, hi = points[order[0]][k], points[order[-1]][k]
            out[order[0]] = out[order[-1]] = math.inf
            if hi == lo:
                continue
            for prev, cur, nxt in zip(order, order[1:], order[2:], strict=False):
                out[cur] += (points[nxt][k] - points[prev][k]) / (hi - lo)
    return out
