"""Wrappers that add behaviour to any strategy: :class:`Dedupe` and :class:`Constraints`.

Both are strategies themselves (``ask``/``tell``/``state_dict``), registered under no name: the
search loop applies them from the config (``dedupe: true``, ``constraints: {max_flops: ...}``),
in either order, e.g. ``Constraints(Dedupe(make_strategy(...)), max_flops=2e6)``.

Contract with the search loop:

- **Infeasible proposals never reach the loop as proposals.** ``Constraints`` checks the cheap
  metrics of each architecture (FLOPs and parameters of ``space.materialize(arch, schema)``)
  before any training; a violating one is told to the inner strategy as
  ``EvalResult(status=INFEASIBLE, reason="flops 3.1e6 > max_flops 2e6")`` and ``ask`` moves on.
- **The loop still records them.** After *every* ``ask`` (also one that returned None) the loop
  calls :func:`drain_infeasible` (or the wrapper's ``drain_infeasible()``) and journals each
  ``(proposal, result)`` it returns, in order, as a finished trial. The loop must not ``tell``
  them: the inner strategy already knows. Plain strategies drain nothing.
- **Trial ids stay contiguous.** Every proposal a wrapper stack makes, returned or drained, has
  its own ``trial_id``; ``Constraints`` keeps the inner ids, ``Dedupe`` renumbers what it lets
  through, so the loop's journal sees 0, 1, 2, ... without gaps or collisions.
- **Repeats are answered, not evaluated.** ``Dedupe`` answers an architecture it has a result
  for by telling the inner strategy that cached result at once and asking again; a repeat of an
  architecture still being evaluated waits for that evaluation's result. Such repeats are not
  returned nor drained, so the loop never sees them (they cost no budget). After
  ``max_repeats`` repeats in a row within one ``ask``, the inner strategy is taken to be
  exhausted or converged and ``ask`` returns None: the loop stops asking, as for any finished
  strategy.
- **State.** Wrapper state nests the inner strategy's (``state["inner"]``). Take it when nothing
  is left to drain; ``Dedupe`` keeps its result cache, not the proposals still outstanding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ranknas.errors import ConfigError, InvalidArchitecture
from ranknas.evaluator.data.schema import DataSchema
from ranknas.evaluator.results import EvalResult, Status
from ranknas.spaces.architecture import Architecture
from ranknas.strategies.base import Proposal, Strategy

Drained = list[tuple[Proposal, EvalResult]]


def drain_infeasible(strategy: Strategy) -> Drained:
    """Proposals a wrapper stack rejected since the last call, with their results.

    Works for any strategy (plain ones drain nothing), so the loop can call it unconditionally.
    """
    drain = getattr(strategy, "drain_infeasible", None)
    return list(drain()) if callable(drain) else []


class _Wrapper(Strategy):
    """A strategy around another; it shares the inner one's space, objectives and seed."""

    def __init__(self, inner: Strategy) -> None:
        if not isinstance(inner, Strategy):
            raise ConfigError("strategies[]", f"a wrapper needs a Strategy, got {inner!r}")
        super().__init__(inner.space, inner.objectives, inner.seed)
        self.inner = inner
        self._infeasible: Drained = []

    def attach(self, job: Any) -> None:
        self.inner.attach(job)

    def constrain(self, wrap: Callable[[Strategy], Strategy]) -> None:
        self.inner.constrain(wrap)

    def summary(self) -> dict[str, Any] | None:
        return self.inner.summary()

    def drain_infeasible(self) -> Drained:
        """Rejected proposals with their INFEASIBLE results, oldest first; clears the list."""
        out, self._infeasible = self._infeasible, []
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.inner.load_state_dict(state["inner"])
        self._infeasible = []


class Dedupe(_Wrapper):
    """Never evaluate an architecture twice: repeats are answered from a result cache.

    Args:
        inner: The strategy to wrap.
        max_repeats: Repeats in a row within one ``ask`` after which ``ask`` returns None
            (the inner strategy keeps proposing known architectures: exhausted or converged).
    """

    def __init__(self, inner: Strategy, max_repeats: int = 200) -> None:
        super().__init__(inner)
        if isinstance(max_repeats, bool) or not isinstance(max_repeats, int) or max_repeats < 1:
            raise ConfigError("dedupe.max_repeats", f"expected an integer >= 1, got "
                              f"{max_repeats!r}")
        self.max_repeats = max_repeats
        self.hits = 0  # repeats answered from the cache or parked on a pending evaluation
        self._cache: dict[str, EvalResult] = {}
        self._outer_to_inner: dict[int, Proposal] = {}
        self._pending: dict[str, int] = {}  # arch_id -> outer trial id being evaluated
        self._parked: dict[str, list[Proposal]] = {}  # inner repeats of a pending arch

    @property
    def cache(self) -> Mapping[str, EvalResult]:
        """arch_id -> the result every later repeat of it gets."""
        return dict(self._cache)

    def _renumber(self, inner: Proposal) -> Proposal:
        outer = self._proposal(inner.arch, budget_examples=inner.budget_examples,
                               meta=inner.meta)
        self._outer_to_inner[outer.trial_id] = inner
        return outer

    def _collect_inner_infeasible(self) -> None:
        for inner, result in drain_infeasible(self.inner):
            aid = inner.arch.arch_id
            if aid in self._cache:  # a repeat, told by the inner wrapper; recorded once
                self.hits += 1
                continue
            self._cache[aid] = result
            outer = self._proposal(inner.arch, budget_examples=inner.budget_examples,
                                   meta=inner.meta)
            self._infeasible.append((outer, result))

    def ask(self) -> Proposal | None:
        repeats = 0
        while repeats < self.max_repeats:
            inner = self.inner.ask()
            self._collect_inner_infeasible()
            if inner is None:
                return None
            aid = inner.arch.arch_id
            if aid in self._cache:
                self.inner.tell(inner, self._cache[aid])
            elif aid in self._pending:
                self._parked.setdefault(aid, []).append(inner)
            else:
                outer = self._renumber(inner)
                self._pending[aid] = outer.trial_id
                return outer
            repeats += 1
            self.hits += 1
        return None

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        aid = proposal.arch.arch_id
        inner = self._outer_to_inner.pop(proposal.trial_id, None)
        if inner is None or inner.arch.arch_id != aid:
            inner = proposal  # not asked through this wrapper (e.g. before a resume)
        self._cache[aid] = result
        if self._pending.get(aid) == proposal.trial_id:
            del self._pending[aid]
        self.inner.tell(inner, result)
        for parked in self._parked.pop(aid, []):
            self.inner.tell(parked, result)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["cache"] = {aid: r.to_json() for aid, r in self._cache.items()}
        state["hits"] = self.hits
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._cache = {aid: EvalResult.from_json(r) for aid, r in state["cache"].items()}
        self.hits = int(state.get("hits", 0))
        self._outer_to_inner, self._pending, self._parked = {}, {}, {}


class Constraints(_Wrapper):
    """Reject architectures whose FLOPs or parameters are out of bounds, before any training.

    Args:
        inner: The strategy to wrap.
        max_flops: Upper bound on forward FLOPs per example (``MaterializedGraph.flops``).
        max_params: Upper bound on trainable parameters, embedding table included.
        min_flops: Lower bound on forward FLOPs per example.
        schema: Data shape to materialize for; None = the space's default schema. Pass the
            dataset's, since parameters depend on the embedding table size.
        max_rejects: Rejections in a row within one ``ask`` before giving up with an error
            (the bounds exclude (almost) everything the strategy proposes).
    """

    def __init__(self, inner: Strategy, max_flops: float | None = None,
                 max_params: float | None = None, min_flops: float | None = None,
                 schema: DataSchema | None = None, max_rejects: int = 1000) -> None:
        super().__init__(inner)
        bounds = {"max_flops": max_flops, "max_params": max_params, "min_flops": min_flops}
        for key, value in bounds.items():
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"constraints.{key}", f"expected a number >= 0 or null, got "
                                  f"{value!r}")
        if all(v is None for v in bounds.values()):
            raise ConfigError("constraints", "set at least one of max_flops, max_params, "
                              "min_flops")
        if min_flops is not None and max_flops is not None and min_flops > max_flops:
            raise ConfigError("constraints.min_flops", f"min_flops ({min_flops}) exceeds "
                              f"max_flops ({max_flops})")
        if schema is not None and not isinstance(schema, DataSchema):
            raise ConfigError("constraints.schema", f"expected a DataSchema, got {schema!r}")
        if isinstance(max_rejects, bool) or not isinstance(max_rejects, int) or max_rejects < 1:
            raise ConfigError("constraints.max_rejects", f"expected an integer >= 1, got "
                              f"{max_rejects!r}")
        self.max_flops, self.max_params, self.min_flops = max_flops, max_params, min_flops
        self.schema = schema
        self.max_rejects = max_rejects
        inner.constrain(lambda s: Constraints(s, max_flops, max_params, min_flops, schema,
                                              max_rejects))

    def check(self, arch: Architecture) -> EvalResult | None:
        """The INFEASIBLE result ``arch`` gets, or None if it satisfies every bound."""
        try:
            graph = self.space.materialize(arch, self.schema)
        except InvalidArchitecture as err:
            return EvalResult(arch.arch_id, Status.INFEASIBLE, reason=f"invalid: {err}")
        metrics = {"flops": float(graph.flops), "params": float(graph.params)}
        reasons = []
        if self.max_flops is not None and metrics["flops"] > self.max_flops:
            reasons.append(f"flops {_num(metrics['flops'])} > max_flops {_num(self.max_flops)}")
        if self.min_flops is not None and metrics["flops"] < self.min_flops:
            reasons.append(f"flops {_num(metrics['flops'])} < min_flops {_num(self.min_flops)}")
        if self.max_params is not None and metrics["params"] > self.max_params:
            reasons.append(f"params {_num(metrics['params'])} > max_params "
                           f"{_num(self.max_params)}")
        if not reasons:
            return None
        return EvalResult(arch.arch_id, Status.INFEASIBLE, metrics, reason="; ".join(reasons))

    def ask(self) -> Proposal | None:
        last = ""
        for _ in range(self.max_rejects):
            proposal = self.inner.ask()
            self._infeasible.extend(drain_infeasible(self.inner))
            if proposal is None:
                return None
            rejected = self.check(proposal.arch)
            if rejected is None:
                return proposal
            self.inner.tell(proposal, rejected)
            self._infeasible.append((proposal, rejected))
            last = rejected.reason
        raise ConfigError("constraints", f"{self.max_rejects} proposals in a row violated the "
                          f"bounds (last: {last}); loosen them")

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        self.inner.tell(proposal, result)


def _num(value: float) -> str:
    """Compact number for reasons: 3100000 -> 3.1e6, 512 -> 512."""
    text = f"{value:.3g}"
    return text.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
