"""Score an architecture by training it from scratch: the sampling-based NAS evaluator."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch

from ranknas.errors import TrainingDiverged
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.evaluator.training import TrainConfig, evaluate, train
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.model import build_model
from ranknas.spaces.space import SearchSpace


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None: leave as is), restoring the count afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class StandaloneEvaluator:
    """Cheap metrics from the materialized graph, then NE by training a standalone model.

    Args:
        space: The search space.
        data: Train/valid/test data; NE is scored on ``valid`` against the train CTR.
        train_config: Training settings; ``examples``/``steps`` is the default per-trial budget.
        objectives: What the search optimises (all are computed either way).
        seed: Seeds model initialisation and batch order, the same for every architecture so
            that differences come from the architecture.
        threads: Intra-op CPU threads per trial. 1 by default: recommender models are many
            small kernels, and two threads sharing a core with anything else (a tracking
            server, another trial) run them 10-20x slower; scale out with executor workers.
    """

    def __init__(self, space: SearchSpace, data: CTRData, train_config: TrainConfig,
                 objectives: Sequence[Objective] = (), seed: int = 0,
                 threads: int | None = 1) -> None:
        self.space = space
        self.data = data
        self.train_config = train_config
        self.objectives = tuple(objectives)
        self.seed = seed
        self.threads = threads

    def cheap_metrics(self, arch: Architecture) -> dict[str, float]:
        """FLOPs per example and parameter counts, without training."""
        graph = self.space.materialize(arch, self.data.schema)
        return {"flops": graph.flops, "params": graph.params, "dense_params": graph.dense_params}

    def __call__(self, arch: Architecture, budget_examples: int | None = None) -> EvalResult:
        """Train ``arch`` on ``budget_examples`` (default: the config's budget) and score it.

        A diverging or out-of-memory run comes back ``failed`` with its reason, never raised.
        """
        with torch_threads(self.threads):
            return self._evaluate(arch, budget_examples)

    def _evaluate(self, arch: Architecture, budget_examples: int | None) -> EvalResult:
        start = time.perf_counter()
        metrics = self.cheap_metrics(arch)
        config = self.train_config
        if budget_examples is not None:
            config = replace(config, examples=int(budget_examples), steps=None)
        config = replace(config, seed=self.seed)
        model = build_model(self.space, arch, self.data.schema, seed=self.seed)
        try:
            result = train(model, self.data, config)
            scores = evaluate(model, self.data.valid, self.data.background_ctr,
                              batch_size=config.eval_batch_size)
        except TrainingDiverged as err:
            return EvalResult(arch.arch_id, Status.FAILED, metrics,
                              examples=err.step * config.batch_size,
                              seconds=time.perf_counter() - start, reason=str(err))
        except torch.OutOfMemoryError as err:
            return EvalResult(arch.arch_id, Status.FAILED, metrics,
                              seconds=time.perf_counter() - start,
                              reason=f"out of memory: {str(err).splitlines()[0]}")
        metrics.update({k: scores[k] for k in ("ne", "logloss", "auc", "calibration")})
        return EvalResult(arch.arch_id, Status.OK, metrics, examples=result.examples,
                          seconds=time.perf_counter() - start)
