"""Stages 2 and 3 of one-shot search: scoring candidates on the trained supernet, in
batches, and choosing the ones to retrain.

:class:`CandidateScorer` extracts each candidate from the supernet, fine-tunes the copy and
scores it on validation data (:func:`~ranknas.supernet.scoring.score_on_supernet`). With
``workers > 1`` a batch is scored in that many spawned processes
(:mod:`ranknas.execution.pool`), which rebuild the supernet from a weights file written once
per search; a candidate's score depends only on its architecture, never on the worker count.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ranknas.evaluator.dominance import pareto_ranks
from ranknas.evaluator.results import EvalResult, Objective
from ranknas.spaces.architecture import Architecture

__all__ = ["CandidateScorer", "top_k"]


class CandidateScorer:
    """Scores architectures on one trained supernet; use it as a context manager.

    Args:
        supernet: The trained :class:`~ranknas.supernet.Supernet`.
        supernet_seed: The seed it was built with (workers rebuild it, then load its weights).
        job: The search loop's job (an :class:`~ranknas.execution.base.EvalJob`); its
            evaluator gives the space, data and train settings. Workers get it pickled.
        finetune: Fine-tuning mode (``none``, ``head``, ``last``, ``whole``).
        options: :func:`~ranknas.supernet.scoring.score_on_supernet` keyword arguments
            (``finetune_examples``, ``finetune_lr``, ``seed``).
        adagrad_sums: The supernet trainer's Adagrad state, to continue in fine-tuning.
        workers: Processes that score a batch; 1 scores in this process.
    """

    def __init__(self, supernet: Any, supernet_seed: int, job: Any, finetune: str,
                 options: Mapping[str, Any], adagrad_sums: Mapping[str, Any] | None = None,
                 workers: int = 1) -> None:
        self.supernet, self.supernet_seed, self.job = supernet, supernet_seed, job
        self.finetune, self.options, self.sums = finetune, dict(options), adagrad_sums
        self.workers = workers
        self._folder: Path | None = None
        self._weights = ""

    def __enter__(self) -> CandidateScorer:
        if self.workers > 1:
            from ranknas.errors import ConfigError
            from ranknas.execution import pool
            from ranknas.execution.base import EvalJob

            if not isinstance(self.job, EvalJob):
                raise ConfigError("strategies[].workers", "scoring in worker processes needs "
                                  "the search loop's EvalJob (attach(job)); got "
                                  f"{type(self.job).__name__}; use workers: 1")
            self._folder = Path(tempfile.mkdtemp(prefix="ranknas-oneshot-"))
            self._weights = pool.save_supernet(self._folder / "supernet.pt", self.supernet,
                                               self.sums)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def score(self, archs: Sequence[Architecture]) -> list[EvalResult]:
        """One EvalResult per architecture, in order (a diverging fine-tune comes back
        ``failed``, never raised)."""
        if self.workers == 1 or len(archs) <= 1:
            return [self._score_here(arch) for arch in archs]
        from ranknas.execution import pool

        results: list[Any] = [None] * len(archs)

        def done(i: int, by_mode: dict[str, EvalResult]) -> None:
            results[i] = by_mode[self.finetune]

        options = {**self.options, "continue": self.sums is not None}
        pool.run_tasks(pool.score_task,
                       [(self.job, self._weights, self.supernet_seed, arch, (self.finetune,),
                         options) for arch in archs],
                       self.workers, done)
        return results

    def _score_here(self, arch: Architecture) -> EvalResult:
        from ranknas.supernet.scoring import score_on_supernet

        ev = self.job.evaluator()
        return score_on_supernet(self.supernet, ev.space, arch, ev.data, ev.train_config,
                                 finetune=self.finetune, adagrad_sums=self.sums,
                                 **self.options)


def top_k(scored: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
          k: int) -> list[dict[str, Any]]:
    """The retrain queue: the ``k`` best distinct scored candidates, best first.

    One objective: by supernet NE. Several: by Pareto rank of the objective values (the
    first front first), then by NE; candidates missing an objective value come last.

    Args:
        scored: Scored candidates, ``{"arch", "arch_id", "ne", "metrics"}`` each; an
            architecture scored twice counts with its best score.
        objectives: The study's objectives.
        k: Queue length at most.

    Returns:
        ``{"arch", "arch_id", "ne", "rank"}`` per queued candidate.
    """
    best: dict[str, Mapping[str, Any]] = {}
    for cand in scored:
        if cand["arch_id"] not in best or cand["ne"] < best[cand["arch_id"]]["ne"]:
            best[cand["arch_id"]] = cand
    cands = list(best.values())
    ranks = [0] * len(cands)
    if len(objectives) > 1:
        keys = [tuple(o.sign() * c["metrics"].get(o.name, math.nan) for o in objectives)
                for c in cands]
        usable = [i for i, key in enumerate(keys) if all(math.isfinite(v) for v in key)]
        ranks = [len(cands)] * len(cands)
        if usable:
            for i, r in zip(usable, pareto_ranks([keys[i] for i in usable]), strict=True):
                ranks[i] = r
    order = sorted(range(len(cands)), key=lambda i: (ranks[i], cands[i]["ne"]))
    return [{"arch": cands[i]["arch"], "arch_id": cands[i]["arch_id"], "ne": cands[i]["ne"],
             "rank": n} for n, i in enumerate(order[:k])]
