"""Any Optuna sampler (TPE, NSGA-II, NSGA-III, GP, CMA-ES, ...) as a ranknas strategy.

How the adapter maps the two worlds:

- **Search space.** Every decision of ``space.choices()`` becomes one fixed categorical
  distribution (``Choice.optuna_distribution()``), so Optuna sees a static space of the same
  shape in every trial; ``study.ask(fixed_distributions)`` samples all of them. The params are
  decoded and canonicalized: decisions that are inactive in the resulting architecture are
  simply ignored (two trials may give the same architecture).
- **Invalid points.** A sampled point that does not canonicalize or materialize
  (``InvalidArchitecture``) is told ``FAIL`` at once (user attribute ``invalid`` holds the
  reason) and the adapter asks again, at most ``max_retries`` times in a row.
- **Results.** ``ok`` results with every objective value finite are told ``COMPLETE`` with
  values in objective order (study directions come from the objectives). ``failed`` and
  ``infeasible`` results, and ok results that lack a value, are told ``FAIL``: samplers ignore
  failed trials, which is what an infeasible point deserves when no sampler-specific
  constraint API is shared by all samplers (pair with the ``Constraints`` wrapper, which rejects
  such points before training, and ``Dedupe``, which stops re-evaluation). ``pruned`` results
  are told ``PRUNED``.
- **Seeding.** Before each ask the adapter gives the study a freshly constructed sampler seeded
  from ``(seed, number of trials so far)``. The sampler's random stream is then a pure function
  of the seed and the study's trials, which is what makes resume exact (below).
- **Resume.** ``state_dict`` lists every trial of the study in order (params, state, values,
  JSON-able system and user attributes, where samplers such as NSGA-II and CMA-ES keep their
  per-trial state) and the study's JSON-able system attributes (NSGA-II's parent-population
  cache, QMC's sequence position), read through the public ``BaseStorage`` API of the study's
  own ``InMemoryStorage``. ``load_state_dict`` replays them into a fresh in-memory study with
  ``study.add_trial(optuna.trial.create_trial(...))``; since the sampler is re-seeded from the
  trial count, the next proposals equal those of the original run continuing (tested for TPE
  and NSGA-II). Resume is exact only as far as Optuna allows: attributes that are not JSON
  and per-instance caches of a sampler are rebuilt or lost. Trials still running at
  ``state_dict`` time are stored as ``FAIL``; a later ``tell`` of their proposal adds them
  again as finished trials.
- **Cost.** A fresh sampler per ask recomputes what a long-lived one would cache (TPE's
  intersection search space): ask costs grow linearly with the trials, about 10 ms at 250
  trials for TPE on a small space, negligible beside training a model.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from ranknas.errors import ConfigError, InvalidArchitecture, SpaceError
from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.space import SearchSpace
from ranknas.strategies.base import Proposal, Strategy
from ranknas.strategies.registry import register_strategy

_NOT_STANDALONE = {"BaseSampler", "BaseGASampler", "PartialFixedSampler"}
_TRIAL_ID_ATTR = "ranknas_trial_id"


def optuna_sampler_names() -> list[str]:
    """Names of the samplers in ``optuna.samplers`` that the adapter can construct."""
    out = []
    for name in optuna.samplers.__all__:
        obj = getattr(optuna.samplers, name, None)
        if (isinstance(obj, type) and issubclass(obj, optuna.samplers.BaseSampler)
                and name not in _NOT_STANDALONE):
            out.append(name)
    return sorted(out)


@register_strategy
class OptunaStrategy(Strategy):
    """Any Optuna sampler (TPE, NSGA-II, NSGA-III, GP, ...) over the space's static choices.

    Args:
        space: The search space.
        objectives: What to optimise; one study direction per objective.
        seed: Seeds the sampler (re-derived before every ask, see the module docstring).
        sampler: Class name in ``optuna.samplers``, e.g. ``TPESampler``, ``NSGAIISampler``,
            ``NSGAIIISampler``, ``GPSampler``, ``RandomSampler``.
        sampler_options: Keyword arguments of the sampler's constructor, e.g.
            ``{"n_startup_trials": 5}``; ``seed`` is not allowed (the strategy's seed is used).
        max_retries: Invalid sampled points told FAIL in a row before ``ask`` gives up.
    """

    name = "optuna"

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 sampler: str = "TPESampler", sampler_options: Mapping[str, Any] | None = None,
                 max_retries: int = 100) -> None:
        super().__init__(space, objectives, seed)
        names = optuna_sampler_names()
        if sampler not in names:
            raise ConfigError("strategies[].sampler", f"unknown Optuna sampler {sampler!r}; "
                              f"allowed: {', '.join(names)}")
        options = dict(sampler_options or {})
        if "seed" in options:
            raise ConfigError("strategies[].sampler_options.seed", "the sampler is seeded "
                              "from the strategy's seed; set `seed` at the top level instead")
        if max_retries < 1:
            raise ConfigError("strategies[].max_retries", f"expected an integer >= 1, got "
                              f"{max_retries}")
        self.sampler_name = sampler
        self.sampler_options = options
        self.max_retries = max_retries
        self._sampler_cls = getattr(optuna.samplers, sampler)
        self._seeded = "seed" in inspect.signature(self._sampler_cls).parameters
        try:
            self._new_sampler(seed)
        except (TypeError, ValueError) as err:
            raise ConfigError("strategies[].sampler_options",
                              f"{sampler} rejected its options {options}: {err}") from err
        self._choices = {c.name: c for c in space.choices()}
        self._dists: dict[str, Any] = {}
        for name, choice in self._choices.items():
            try:
                self._dists[name] = choice.optuna_distribution()
            except NotImplementedError as err:
                raise ConfigError(f"space.{name}", "this decision is too large for an Optuna "
                                  "categorical distribution; use another strategy") from err
        self._study = self._new_study()
        self._trials: dict[int, tuple[optuna.trial.Trial, str]] = {}
        self._orphans: dict[int, tuple[dict[str, Any], str]] = {}

    # -- plumbing -------------------------------------------------------------------------
    def _new_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        extra = {"seed": seed} if self._seeded else {}
        return self._sampler_cls(**self.sampler_options, **extra)

    def _new_study(self) -> optuna.Study:
        self._storage = optuna.storages.InMemoryStorage()
        directions = [o.direction for o in self.objectives]
        study = optuna.create_study(storage=self._storage, directions=directions,
                                    sampler=self._new_sampler(self.seed))
        self._study_id = self._storage.get_study_id_from_name(study.study_name)
        return study

    def _derived_seed(self) -> int:
        n = len(self._study.get_trials(deepcopy=False))
        return random.Random(f"ranknas-optuna:{self.seed}:{n}").getrandbits(32)

    def _decode(self, params: Mapping[str, Any]) -> Architecture:
        arch = self.space.canonicalize(
            {n: self._choices[n].decode(v) for n, v in params.items()})
        self.space.materialize(arch)
        return arch

    def _add(self, params: Mapping[str, Any], state: TrialState,
             values: Sequence[float] | None, user_attrs: Mapping[str, Any],
             system_attrs: Mapping[str, Any] | None = None) -> None:
        self._study.add_trial(optuna.trial.create_trial(
            params=dict(params), distributions={n: self._dists[n] for n in params},
            state=state, values=None if values is None else list(values),
            user_attrs=dict(user_attrs), system_attrs=dict(system_attrs or {})))

    # -- ask/tell -------------------------------------------------------------------------
    def ask(self) -> Proposal:
        last: InvalidArchitecture | None = None
        for _ in range(self.max_retries):
            self._study.sampler = self._new_sampler(self._derived_seed())
            trial = self._study.ask(self._dists)
            try:
                arch = self._decode(trial.params)
            except InvalidArchitecture as err:
                last = err
                trial.set_user_attr("invalid", str(err))
                self._study.tell(trial, state=TrialState.FAIL)
                continue
            proposal = self._proposal(arch, meta={"optuna_trial": trial.number})
            trial.set_user_attr(_TRIAL_ID_ATTR, proposal.trial_id)
            self._trials[proposal.trial_id] = (trial, arch.arch_id)
            return proposal
        raise SpaceError(self.space.name, f"{self.sampler_name} sampled {self.max_retries} "
                         f"invalid architectures in a row; last: {last}")

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        values = result.values(self.objectives)
        if values is not None:
            state = TrialState.COMPLETE
        elif result.status is Status.PRUNED:
            state = TrialState.PRUNED
        else:
            state = TrialState.FAIL
        arch_id = proposal.arch.arch_id
        entry = self._trials.get(proposal.trial_id)
        if entry is not None and entry[1] == arch_id:
            del self._trials[proposal.trial_id]
            self._study.tell(entry[0], values=None if values is None else list(values),
                             state=state)
            return
        # A proposal this study did not ask (or asked before a resume): add it as finished.
        orphan = self._orphans.get(proposal.trial_id)
        if orphan is not None and orphan[1] == arch_id:
            params = self._orphans.pop(proposal.trial_id)[0]
        else:
            params = {n: self._choices[n].encode(v) for n, v in proposal.arch.choices}
        self._add(params, state, values, {_TRIAL_ID_ATTR: proposal.trial_id})

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["trials"] = [{
            "params": dict(t.params), "state": t.state.name,
            "values": None if t.values is None else list(t.values),
            "user_attrs": _jsonable(t.user_attrs), "system_attrs": _jsonable(t.system_attrs),
        } for t in self._study.get_trials(deepcopy=False)]
        state["study_system_attrs"] = _jsonable(
            self._storage.get_study_system_attrs(self._study_id))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._study = self._new_study()
        self._trials, self._orphans = {}, {}
        for key, value in state.get("study_system_attrs", {}).items():
            self._storage.set_study_system_attr(self._study_id, key, value)
        for rec in state["trials"]:
            trial_state = TrialState[rec["state"]]
            if not trial_state.is_finished():  # asked, never told: see the module docstring
                trial_id = rec["user_attrs"].get(_TRIAL_ID_ATTR)
                if trial_id is not None:
                    self._orphans[int(trial_id)] = (rec["params"],
                                                    self._decode(rec["params"]).arch_id)
                trial_state = TrialState.FAIL
            values = rec["values"] if trial_state is TrialState.COMPLETE else None
            self._add(rec["params"], trial_state, values, rec["user_attrs"],
                      rec["system_attrs"])

    @property
    def study(self) -> optuna.Study:
        """The underlying in-memory study (read it, do not tell it)."""
        return self._study


def _jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes that survive JSON (others are dropped: resume rebuilds them if it can)."""
    out = {}
    for key, value in attrs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out
