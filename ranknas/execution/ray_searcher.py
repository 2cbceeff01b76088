"""The Ray Tune side of a ranknas run: the ``Searcher`` that drives a strategy, and the JSON
form in which proposals and results travel between the driver and Tune trials.

Tune asks its search algorithm for trial configs and reports finished trials;
``StrategySearcher`` answers with the strategy's ``ask`` and passes results to its ``tell``,
in the driver process. The classes are built once Ray is imported (:func:`_tune_classes`), so
this module, like :mod:`ranknas.execution.ray_executor`, imports without Ray.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ranknas.evaluator.results import EvalResult, Status
from ranknas.execution.base import Budget, OnResult, cost_examples, drain_infeasible
from ranknas.strategies.base import Proposal, Strategy

#: The key under which a trial reports its result (a JSON string: Tune flattens nested dicts).
RESULT_KEY = "ranknas_result"

_SPACES: dict[str, Any] = {}  # proposal_from_json's loaded spaces, by name


def proposal_to_json(proposal: Proposal) -> dict[str, Any]:
    """The JSON-able form of a proposal that travels to a Tune trial as its config."""
    return {"arch": proposal.arch.to_json(), "arch_id": proposal.arch.arch_id,
            "trial_id": proposal.trial_id, "budget_examples": proposal.budget_examples,
            "meta": json.loads(json.dumps(dict(proposal.meta)))}


def proposal_from_json(obj: Mapping[str, Any], space_name: str | None = None) -> Proposal:
    """Rebuild a proposal from :func:`proposal_to_json`, checking it against its space.

    Args:
        obj: The proposal JSON.
        space_name: A built-in space name or YAML path; default: the architecture's space.
    """
    from ranknas.spaces import load_space

    name = space_name or str(obj["arch"]["space"])
    if name not in _SPACES:
        _SPACES[name] = load_space(name)
    return Proposal(_SPACES[name].from_json(obj["arch"]), int(obj["trial_id"]),
                    obj.get("budget_examples"), obj.get("meta") or {})


def _error_reason(trial: Any) -> str:
    """A one-line reason from an errored Tune trial (a crashed worker, an unpicklable job).

    Tune writes the error next to the trial's local artifacts before telling the searcher, and
    syncs it to ``storage_path`` only later, so the local copy is read first.
    """
    err: Any = None
    try:
        local = Path(trial.pickled_error_file or "")
        if local.is_file():
            import ray.cloudpickle

            with local.open("rb") as f:
                err = ray.cloudpickle.load(f)
        else:
            err = trial.get_pickled_error() or trial.get_error()
    except Exception:  # no error file after all: the generic reason will do
        err = None
    if err is None:
        return "ray trial errored"
    cause = getattr(err, "cause", None) or err
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    return f"ray trial errored: {type(cause).__name__}: {lines[0] if lines else ''}"[:1000]


_CLASSES: dict[str, type] = {}


def _tune_classes() -> dict[str, type]:
    """The Tune plugin classes, built once Ray is imported (this module imports without Ray).

    They hold their state in attributes, not closures, so that their ``__getstate__`` keeps the
    strategy and callbacks out of the ``tuner.pkl`` that Tune writes.
    """
    if _CLASSES:
        return _CLASSES
    from ray.tune import Callback, Stopper
    from ray.tune.search import Searcher

    class StrategySearcher(Searcher):
        """Adapts Tune's ``suggest``/``on_trial_complete`` to ``ask``/``tell`` (driver side)."""

        def __init__(self, strategy: Strategy, budget: Budget, on_result: OnResult) -> None:
            super().__init__()
            self.strategy, self.budget, self.on_result = strategy, budget, on_result
            self.live: dict[str, Proposal] = {}
            self.trials: list = []  # Tune's own trial list, to read an errored trial's reason
            self.error: BaseException | None = None
            self.done = False

        def _budget_state(self) -> bool | None:
            """True: ask; False: finished; None: wait for outstanding trials."""
            b, live = self.budget, list(self.live.values())
            if b.exhausted or (b.trials is not None and b.used_trials + len(live) >= b.trials):
                return False
            if b.examples is not None and live:
                mean = b.used_examples / b.used_trials if b.used_trials else 0.0
                expected = sum(p.budget_examples if p.budget_examples is not None else mean
                               for p in live)
                if b.used_examples + expected >= b.examples:
                    return None
            return True

        def suggest(self, trial_id: str) -> dict | str | None:
            if self.error is not None or self.done:
                return self.FINISHED
            try:
                state = self._budget_state()
                if state is None:
                    return None
                proposal = self.strategy.ask() if state else None
                drain_infeasible(self.strategy, self.on_result)
            except BaseException as err:  # re-raised in the driver after Tune stops
                self.error = err
                return self.FINISHED
            if proposal is None:
                self.done = True
                return self.FINISHED
            self.live[trial_id] = proposal
            return {"proposal": proposal_to_json(proposal)}

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            proposal = self.live.pop(trial_id, None)
            if proposal is None or self.error is not None:
                return
            if error:
                trial = next((t for t in self.trials if t.trial_id == trial_id), None)
                reason = _error_reason(trial) if trial is not None else "ray trial errored"
                evaluated = EvalResult(proposal.arch.arch_id, Status.FAILED, reason=reason)
            elif result is None or RESULT_KEY not in result:
                evaluated = EvalResult(proposal.arch.arch_id, Status.FAILED,
                                       reason="ray trial ended without reporting a result")
            else:
                evaluated = EvalResult.from_json(json.loads(result[RESULT_KEY]))
            try:
                self.strategy.tell(proposal, evaluated)
                self.budget.spend(evaluated, cost_examples(proposal))
                self.on_result(proposal, evaluated)
            except BaseException as err:
                self.error = err

        def save(self, checkpoint_path: str) -> None:
            """No Tune-side state: resume goes through ranknas's own journal."""

        def restore(self, checkpoint_path: str) -> None:
            """See :meth:`save`."""

        def __getstate__(self) -> dict:
            return {"_metric": self._metric, "_mode": self._mode}

    class TrialList(Callback):
        """Lends the searcher Tune's trial list (an errored trial's reason is read from it)."""

        def __init__(self, searcher: StrategySearcher) -> None:
            self.searcher = searcher

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            self.searcher.trials = trials

        def __getstate__(self) -> dict:
            return {}

    class Abort(Stopper):
        """Ends the whole run as soon as the driver side (strategy, ``on_result``) raised."""

        def __init__(self, searcher: StrategySearcher) -> None:
            self.searcher = searcher

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.searcher.error is not None

        def __getstate__(self) -> dict:
            return {}

    _CLASSES.update(searcher=StrategySearcher, callback=TrialList, stopper=Abort)
    return _CLASSES


def _make_searcher(strategy: Strategy, budget: Budget, on_result: OnResult) -> Any:
    """A Tune ``Searcher`` driving ``strategy``."""
    return _tune_classes()["searcher"](strategy, budget, on_result)
