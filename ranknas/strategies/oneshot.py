"""One-shot NAS: train a weight-sharing supernet once, search on it, retrain the best.

Three stages, all driven by :meth:`OneShot.ask`:

1. On the first ``ask()`` after :meth:`OneShot.attach`, build ``Supernet(space, schema, seed)``
   and train it with :class:`~ranknas.supernet.SupernetTrainer` on ``supernet_examples``
   (optimizer, batch size and device from the run's ``TrainConfig``; ``supernet_lr`` overrides
   the learning rate).
2. Run the inner strategy (``evolution`` by default, any registered ask/tell strategy) for
   ``candidates`` rounds. Each candidate is extracted from the supernet (a copy; the supernet
   is untouched), fine-tuned per ``finetune`` on ``finetune_examples``, scored by validation
   NE, and told back with its cheap metrics (flops, params). The study's constraints (see
   :meth:`OneShot.constrain`) apply to the inner strategy too. ``parallel`` candidates are
   asked at a time and scored in ``workers`` processes
   (:class:`~ranknas.strategies.oneshot_scoring.CandidateScorer`).
3. Propose the ``top_k`` distinct best candidates, one per ``ask()``, to be retrained from
   scratch by the executor; then ``ask()`` returns None.

Budget: the first retrain proposal carries ``meta["cost_examples"]`` = supernet training plus
all fine-tuning examples, which the search loop adds to the run's totals; the retraining itself
is charged by the executor as usual.

Every stage is reported: :meth:`OneShot.summary` gives the stage totals, each candidate's
supernet score and metric series (``supernet.loss`` per logged training step,
``search.supernet_ne`` / ``search.best_supernet_ne`` per candidate, ``retrain.ne`` and
``retrain.supernet_ne`` per retrained rank) that the search loop logs to the MLflow parent
run. A supernet whose training diverges ends the strategy: the stage is recorded ``failed``
with its reason and nothing is proposed, so the other runs of the study go on.

Resume: the state holds the stage, the scored candidates, the retrain queue, the next id and
the rng, not the supernet weights. Stages 1-2 run inside one ``ask()`` call, so a saved state
is either before them (``init``) or after them; a run killed during stages 1-2 restarts
them from scratch on resume. A run resumed in the retrain stage needs no supernet.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ranknas.errors import ConfigError, TrainingDiverged
from ranknas.evaluator.results import EvalResult, Objective
from ranknas.spaces.space import SearchSpace
from ranknas.strategies.base import Proposal, Strategy
from ranknas.strategies.registry import make_strategy, register_strategy
from ranknas.strategies.wrappers import drain_infeasible
from ranknas.supernet.scoring import FINETUNE_MODES
from ranknas.supernet.train_config import EXECUTION_OPTIONS

__all__ = ["FINETUNE_MODES", "OneShot"]

WHERE = "strategies[]"


def _derived_seed(seed: int, tag: str) -> int:
    """A non-negative seed for one component, independent of the other components' streams."""
    return random.Random(f"oneshot-{tag}-{seed}").getrandbits(31)


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{WHERE}.{name}", f"expected an integer >= {minimum}, got {value!r}")


@register_strategy
class OneShot(Strategy):
    """One-shot NAS: supernet training, inner search on the supernet, top-k retrained.

    Args:
        space: The search space.
        objectives: What to optimise; with several, the top-k are taken by Pareto rank of
            the supernet scores, then by NE.
        seed: Seeds the supernet, its path sampler, fine-tuning and the inner strategy.
        supernet_examples: Examples to train the supernet on (stage 1).
        sampler: Path sampler name (``ranknas.supernet.SAMPLERS``).
        sampler_options: Options of the sampler, e.g. ``{"max_inputs": 2}``.
        warmup_steps: When > 0, wrap the sampler in ``warmup`` over this many steps.
        inner: Registered name of the inner strategy (stage 2).
        inner_options: Options of the inner strategy.
        candidates: Inner ask/tell rounds, each scored on the supernet.
        finetune: ``none``, ``head`` (the logit head), ``last`` (head and the last block) or
            ``whole``. ``last`` by default: inherited weights alone do not rank architectures
            (Kendall τ ~0 in ``benchmarks/RESULTS.md``).
        finetune_examples: Fine-tuning examples per candidate (0 with ``finetune="none"``).
        finetune_lr: Fine-tuning learning rate; None: the run's train lr.
        finetune_continue: Fine-tune from the supernet's Adagrad accumulators (sliced per
            candidate) rather than empty ones; needs the adagrad optimizer.
        top_k: Distinct best candidates proposed for retraining from scratch (stage 3).
        parallel: Candidates asked of the inner strategy at a time and scored as a batch
            (the inner strategy sees their results together); 1 asks one at a time.
        workers: Processes that score a batch (one CPU thread each, or sharing a GPU);
            scores do not depend on it. More than 1 needs the search loop's ``EvalJob``.
        supernet_lr: Learning rate of supernet training; None: the run's train lr.
        supernet_train: Execution of supernet training (``SupernetTrainConfig`` fields
            ``execution``, ``embedding_update``, ``check_every``, ``compile``,
            ``cuda_graph``, ``precision``), e.g.
            ``{"execution": "segmented", "cuda_graph": true, "precision": "tf32"}`` on a
            GPU (``benchmarks/RESULTS.md`` compares the executions per card and batch).

    Raises:
        ConfigError: a bad option; ``where`` is ``strategies[].<option>``.
    """

    name = "oneshot"

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 supernet_examples: int = 200_000, sampler: str = "any-path",
                 sampler_options: dict | None = None, warmup_steps: int = 0,
                 inner: str = "evolution", inner_options: dict | None = None,
                 candidates: int = 100, finetune: str = "last", finetune_examples: int = 20_000,
                 top_k: int = 3, supernet_lr: float | None = None,
                 finetune_lr: float | None = None, finetune_continue: bool = False,
                 supernet_train: dict | None = None, parallel: int = 1,
                 workers: int = 1) -> None:
        super().__init__(space, objectives, seed)
        from ranknas.supernet.samplers import SAMPLERS

        _check_int("supernet_examples", supernet_examples, 1)
        _check_int("warmup_steps", warmup_steps, 0)
        _check_int("candidates", candidates, 1)
        _check_int("finetune_examples", finetune_examples, 0)
        _check_int("top_k", top_k, 1)
        _check_int("parallel", parallel, 1)
        _check_int("workers", workers, 1)
        if sampler not in SAMPLERS or sampler == "warmup":
            allowed = ", ".join(n for n in SAMPLERS if n != "warmup")
            raise ConfigError(f"{WHERE}.sampler", f"unknown sampler {sampler!r}; allowed: "
                              f"{allowed} (use warmup_steps for a full-path warm-up)")
        if finetune not in FINETUNE_MODES:
            raise ConfigError(f"{WHERE}.finetune", f"expected one of "
                              f"{', '.join(FINETUNE_MODES)}, got {finetune!r}")
        if finetune != "none" and finetune_examples == 0:
            raise ConfigError(f"{WHERE}.finetune_examples", f"finetune={finetune!r} needs "
                              "finetune_examples >= 1")
        for name, lr in (("supernet_lr", supernet_lr), ("finetune_lr", finetune_lr)):
            if lr is not None and not (lr > 0 and math.isfinite(lr)):
                raise ConfigError(f"{WHERE}.{name}", f"expected a finite number > 0, got {lr!r}")
        if inner == self.name:
            raise ConfigError(f"{WHERE}.inner", "the inner strategy cannot be oneshot itself")
        self.supernet_examples = supernet_examples
        self.sampler = sampler
        self.sampler_options = dict(sampler_options or {})
        self.warmup_steps = warmup_steps
        self.inner = inner
        self.inner_options = dict(inner_options or {})
        self.candidates = candidates
        self.finetune = finetune
        self.finetune_examples = finetune_examples
        self.top_k = top_k
        self.parallel, self.workers = parallel, workers
        self.supernet_lr = supernet_lr
        self.finetune_lr = finetune_lr
        if not isinstance(finetune_continue, bool):
            raise ConfigError(f"{WHERE}.finetune_continue", f"expected true or false, got "
                              f"{finetune_continue!r}")
        self.finetune_continue = finetune_continue
        self.supernet_train = dict(supernet_train or {})
        unknown = sorted(set(self.supernet_train) - set(EXECUTION_OPTIONS))
        if unknown:
            raise ConfigError(f"{WHERE}.supernet_train.{unknown[0]}", "unknown option; allowed: "
                              f"{', '.join(EXECUTION_OPTIONS)}")
        # fail at config time on a bad value (the run's device is known only later)
        self._train_config()
        self._make_inner()  # fail at config time on a bad inner name or option
        self._make_sampler(None)  # likewise for the sampler options
        self._job: Any = None
        self._wrap_inner: Callable[[Strategy], Strategy] | None = None
        self._sums: dict | None = None  # the supernet's Adagrad state, while scoring
        self.stage = "init"  # init -> retrain -> done
        self.candidates_scored: list[dict[str, Any]] = []
        self.queue: list[dict[str, Any]] = []
        self.pending_cost = 0
        self.stages: list[dict[str, Any]] = []  # per-stage summaries, for logging
        self.retrained: dict[str, dict[str, Any]] = {}
        self.series: dict[str, list[list[float]]] = {}  # metric -> [[step, value], ...]

    # -- components -----------------------------------------------------------------------
    def _make_inner(self) -> Strategy:
        try:
            return make_strategy(self.inner, self.space, self.objectives,
                                 seed=_derived_seed(self.seed, "inner"),
                                 where=f"{WHERE}.inner_options", **self.inner_options)
        except ConfigError as err:
            if err.where == f"{WHERE}.inner_options.name":
                raise ConfigError(f"{WHERE}.inner", err.message) from err
            raise

    def _make_sampler(self, schema: Any) -> Any:
        from ranknas.supernet.samplers import make_sampler

        name, options = self.sampler, dict(self.sampler_options)
        if self.warmup_steps > 0:
            name, options = "warmup", {"warmup_steps": self.warmup_steps,
                                       "inner": self.sampler, **options}
        try:
            return make_sampler(name, self.space, _derived_seed(self.seed, "sampler"),
                                schema=schema, **options)
        except ConfigError as err:
            if err.where.startswith("supernet.sampler"):
                raise ConfigError(f"{WHERE}.sampler_options", err.message) from err
            raise

    def _train_config(self, train: Any = None, **fields: Any) -> Any:
        """Supernet settings following the run's ``train`` (None: a config-time check)."""
        from ranknas.supernet import SupernetTrainConfig

        try:
            if train is None:
                device = "cuda" if self.supernet_train.get("cuda_graph") else "cpu"
                return SupernetTrainConfig(examples=self.supernet_examples, device=device,
                                           **self.supernet_train)
            return SupernetTrainConfig.following(train, self.supernet_examples,
                                                 lr=self.supernet_lr, **fields,
                                                 **self.supernet_train)
        except ConfigError as err:
            if err.where.startswith("supernet.train."):
                name = err.where.removeprefix("supernet.train.")
                if name in EXECUTION_OPTIONS:
                    raise ConfigError(f"{WHERE}.supernet_train.{name}", err.message) from err
            raise

    # -- the loop's hooks -------------------------------------------------------------------
    def attach(self, job: Any) -> None:
        """Take the run's ``EvalJob``: its space, data and train settings drive stages 1-2."""
        self._job = job

    def constrain(self, wrap: Callable[[Strategy], Strategy]) -> None:
        """Apply the study's constraints to the inner search, so that no supernet scoring is
        spent on (and no retrain slot goes to) an architecture the study would reject."""
        self._wrap_inner = wrap

    def ask(self) -> Proposal | None:
        if self.stage == "init":
            if self._job is None:
                raise ConfigError(f"{WHERE}.name", "the one-shot strategy needs the search "
                                  "loop's data: call attach(job) with the run's EvalJob "
                                  "before ask()")
            self._search(self._job.evaluator())
        if not self.queue:
            self.stage = "done"
            return None
        entry = self.queue.pop(0)
        meta: dict[str, Any] = {"stage": "retrain", "supernet_ne": entry["ne"],
                                "rank": entry["rank"]}
        if self.pending_cost:
            meta["cost_examples"] = self.pending_cost
            self.pending_cost = 0
        arch = self.space.from_json(entry["arch"], where="state.queue[].arch")
        return self._proposal(arch, meta=meta)

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        ne, supernet_ne = result.metrics.get("ne"), proposal.meta.get("supernet_ne")
        self.retrained[proposal.arch.arch_id] = {
            "status": result.status.value, "ne": ne, "supernet_ne": supernet_ne}
        rank = proposal.meta.get("rank")
        if rank is not None and ne is not None and math.isfinite(ne):
            self._record("retrain.ne", rank, ne)
            if supernet_ne is not None:
                self._record("retrain.supernet_ne", rank, supernet_ne)

    def _record(self, metric: str, step: int, value: float) -> None:
        self.series.setdefault(metric, []).append([int(step), float(value)])

    # -- stages 1 and 2 -------------------------------------------------------------------
    def _search(self, evaluator: Any) -> None:
        """Train the supernet, score ``candidates`` inner proposals, fill the retrain queue."""
        from ranknas.execution.standalone import torch_threads
        from ranknas.supernet import Supernet, SupernetTrainer

        data, cfg = evaluator.data, evaluator.train_config
        with torch_threads(getattr(evaluator, "threads", None)):
            start = time.perf_counter()
            supernet = Supernet(self.space, data.schema, _derived_seed(self.seed, "supernet"))
            trainer = SupernetTrainer(supernet, data, self._make_sampler(data.schema),
                                      self._train_config(
                                          cfg, seed=_derived_seed(self.seed, "train"),
                                          log_every=self._log_every(cfg.batch_size)))
            try:
                with trainer:  # closing stops its path prefetch worker, if any
                    out = trainer.train(self.supernet_examples, progress=lambda p: (
                        self._record("supernet.loss", p["step"], p["loss"])))
            except TrainingDiverged as err:
                self.stages.append({"stage": "supernet", "status": "failed",
                                    "reason": f"supernet training diverged: {err}",
                                    "examples": trainer.examples, "steps": trainer.step,
                                    "seconds": time.perf_counter() - start})
                self.pending_cost, self.queue, self.stage = trainer.examples, [], "retrain"
                return
            self.stages.append({"stage": "supernet", "status": "ok",
                                "examples": out["examples"], "steps": out["steps"],
                                "loss": out["loss"], "seconds": time.perf_counter() - start,
                                "graphs_captured": out["captured"]})
            start = time.perf_counter()
            self._sums = trainer.adagrad_sums() if self.finetune_continue else None
            if self.finetune_continue and self._sums is None:
                raise ConfigError(f"{WHERE}.finetune_continue", "needs train.optimizer "
                                  f"adagrad, not {cfg.optimizer!r}")
            inner = self._make_inner()
            if self._wrap_inner is not None:
                inner = self._wrap_inner(inner)
            finetuned = self._score_candidates(supernet, inner)
            self._sums = None  # full-size optimizer state: not kept past scoring
            self.stages.append({"stage": "search", "status": "ok", "examples": finetuned,
                                "candidates": len(self.candidates_scored),
                                "seconds": time.perf_counter() - start})
        self.pending_cost = int(out["examples"]) + finetuned
        self.queue = self._top_k()
        self.stage = "retrain"

    def _score_candidates(self, supernet: Any, inner: Strategy) -> int:
        """Ask ``candidates`` proposals of ``inner`` (``parallel`` at a time), score each on
        ``supernet`` and tell it back; the fine-tuning examples spent."""
        from ranknas.strategies.oneshot_scoring import CandidateScorer

        options = {"finetune_examples": self.finetune_examples,
                   "finetune_lr": self.finetune_lr, "seed": _derived_seed(self.seed, "finetune")}
        finetuned, best, asked, exhausted = 0, math.inf, 0, False
        with CandidateScorer(supernet, _derived_seed(self.seed, "supernet"), self._job,
                             self.finetune, options, self._sums, self.workers) as scorer:
            while asked < self.candidates and not exhausted:
                batch: list[Proposal] = []
                while len(batch) < min(self.parallel, self.candidates - asked):
                    proposal = inner.ask()
                    drain_infeasible(inner)  # already told to the inner strategy
                    if proposal is None:
                        exhausted = True
                        break
                    batch.append(proposal)
                for proposal, result in zip(batch, scorer.score([p.arch for p in batch]),
                                            strict=True):
                    inner.tell(proposal, result)
                    finetuned += result.examples
                    if result.ok and math.isfinite(result.metrics.get("ne", math.nan)):
                        best = min(best, result.metrics["ne"])
                        self._record("search.supernet_ne", asked, result.metrics["ne"])
                        self._record("search.best_supernet_ne", asked, best)
                        self.candidates_scored.append({
                            "arch": proposal.arch.to_json(),
                            "arch_id": proposal.arch.arch_id, "ne": result.metrics["ne"],
                            "flops": result.metrics["flops"],
                            "params": result.metrics["params"],
                            "metrics": dict(result.metrics)})
                    asked += 1
        return finetuned

    def _log_every(self, batch_size: int) -> int:
        """About 100 points on the supernet loss curve."""
        return max(1, math.ceil(self.supernet_examples / batch_size / 100))

    # -- stage 3 --------------------------------------------------------------------------
    def _top_k(self) -> list[dict[str, Any]]:
        """The retrain queue (see :func:`~ranknas.strategies.oneshot_scoring.top_k`)."""
        from ranknas.strategies.oneshot_scoring import top_k

        return top_k(self.candidates_scored, self.objectives, self.top_k)

    # -- state ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any] | None:
        """Stages (supernet training, candidate search, retraining), every candidate's
        supernet score and the metric series (``{"metrics": {name: [[step, value], ...]}}``,
        see the module docs) that the search loop logs to MLflow."""
        if not self.stages:
            return None
        metrics = dict(self.series)
        for stage in self.stages:  # stage totals as one-point series
            for key in ("examples", "steps", "seconds", "candidates", "graphs_captured"):
                if key in stage:
                    metrics[f"{stage['stage']}.{key}"] = [[0, float(stage[key])]]
        return {"stages": self.stages, "retrained": self.retrained, "metrics": metrics,
                "candidates": [{k: v for k, v in c.items() if k != "arch"}
                               for c in self.candidates_scored]}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; the supernet weights are not in it (see the module docs)."""
        state = super().state_dict()
        state.update({"stage": self.stage, "candidates_scored": self.candidates_scored,
                      "queue": self.queue, "pending_cost": self.pending_cost,
                      "stages": self.stages, "retrained": self.retrained,
                      "series": self.series})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.stage = str(state["stage"])
        if self.stage not in ("init", "retrain", "done"):
            raise ConfigError("state.stage", f"unknown one-shot stage {self.stage!r}")
        self.candidates_scored = [dict(c) for c in state["candidates_scored"]]
        self.queue = [dict(e) for e in state["queue"]]
        self.pending_cost = int(state.get("pending_cost", 0))
        self.stages = [dict(s) for s in state.get("stages", [])]
        self.retrained = {k: dict(v) for k, v in state.get("retrained", {}).items()}
        self.series = {k: [list(p) for p in v] for k, v in state.get("series", {}).items()}
        if self.stage == "init":  # killed before or during stages 1-2: they run again
            self.candidates_scored, self.queue, self.pending_cost = [], [], 0
            self.stages, self.series = [], {}
