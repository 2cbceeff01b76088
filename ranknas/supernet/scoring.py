"""Score one architecture on a trained supernet: extract, optionally fine-tune, evaluate.

Shared by the one-shot strategy (:mod:`ranknas.strategies.oneshot`) and the rank-correlation
diagnostics (:mod:`ranknas.reports.rankcorr`), so both measure the same thing.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ranknas.errors import ConfigError, TrainingDiverged
from ranknas.evaluator.results import EvalResult, Status
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.space import SearchSpace

if TYPE_CHECKING:
    import torch

__all__ = ["FINETUNE_MODES", "block_of", "score_on_supernet"]

#: Fine-tuning modes: no training, the logit head only (a recalibration of the inherited
#: features), head + last block, or every parameter.
FINETUNE_MODES = ("none", "head", "last", "whole")


def block_of(node_key: str) -> str:
    """Block name of a materialized node key: ``top#0`` -> ``top``, ``b7.dense`` -> ``b7``."""
    return re.split(r"[#.]", node_key, maxsplit=1)[0]


def _freeze_all_but(model: Any, graph: Any, last_block: bool) -> None:
    """Leave only the logit head (and the ops of the graph's last block) trainable."""
    last = block_of(graph.nodes[-1].key)
    keep = {id(p) for p in model.head.parameters()}
    for module, node in zip(model.ops, graph.nodes, strict=True):
        if last_block and block_of(node.key) == last:
            keep.update(id(p) for p in module.parameters())
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def score_on_supernet(supernet: Any, space: SearchSpace, arch: Architecture, data: Any,
                      train_config: Any, *, finetune: str = "none", finetune_examples: int = 0,
                      finetune_lr: float | None = None, seed: int = 0,
                      adagrad_sums: Mapping[str, torch.Tensor] | None = None) -> EvalResult:
    """Extract ``arch`` from ``supernet``, fine-tune the copy per ``finetune``, score on valid.

    The supernet itself is never modified (``Supernet.extract`` returns a copy).

    Args:
        supernet: A trained :class:`~ranknas.supernet.Supernet`.
        space: The search space of ``arch``.
        arch: The architecture to score.
        data: The dataset; fine-tuning reads ``train``, scoring reads ``valid``.
        train_config: The run's :class:`~ranknas.evaluator.training.TrainConfig`; fine-tuning
            uses its optimizer and batch size with ``finetune_examples`` and ``seed``.
        finetune: ``none``, ``head`` (the logit head), ``last`` (head and the last block) or
            ``whole``.
        finetune_examples: Fine-tuning examples (needed >= 1 unless ``finetune='none'``).
        finetune_lr: Learning rate of fine-tuning (dense and embedding); None: the train
            config's. Inherited weights usually want a smaller one: Adagrad starts from an
            empty accumulator, so its first steps move every weight by about the lr.
        seed: Seeds fine-tuning's batch order.
        adagrad_sums: The supernet trainer's Adagrad accumulators
            (``SupernetTrainer.adagrad_sums()``): fine-tuning then continues that optimizer
            on the extracted slices instead of starting from empty accumulators.

    Returns:
        An :class:`EvalResult` with flops/params/dense_params and ne/logloss/auc/calibration;
        ``examples`` counts the fine-tuning examples. A diverging fine-tune comes back
        ``failed``, never raised.

    Raises:
        ConfigError: an unknown ``finetune`` mode or a missing fine-tuning budget.
    """
    from ranknas.evaluator.training import evaluate, train

    if finetune not in FINETUNE_MODES:
        raise ConfigError("finetune", f"expected one of {', '.join(FINETUNE_MODES)}, "
                          f"got {finetune!r}")
    if finetune != "none" and (isinstance(finetune_examples, bool)
                               or not isinstance(finetune_examples, int)
                               or finetune_examples < 1):
        raise ConfigError("finetune_examples", f"finetune={finetune!r} needs an integer "
                          f">= 1, got {finetune_examples!r}")
    if finetune_lr is not None and not (isinstance(finetune_lr, float | int)
                                        and not isinstance(finetune_lr, bool)
                                        and math.isfinite(finetune_lr) and finetune_lr > 0):
        raise ConfigError("finetune_lr", f"expected a finite number > 0, got {finetune_lr!r}")
    start = time.perf_counter()
    graph = space.materialize(arch, data.schema)
    metrics: dict[str, float] = {"flops": graph.flops, "params": graph.params,
                                 "dense_params": graph.dense_params}
    # Scored on the run's device whatever the supernet's: a copy left on the CPU (a worker's
    # supernet loaded from file) was evaluated there, 20-40 s a candidate in a GPU run.
    model = supernet.extract(arch).to(train_config.device)
    examples = 0
    if finetune != "none":
        if finetune in ("head", "last"):
            _freeze_all_but(model, graph, last_block=finetune == "last")
        ft_cfg = replace(train_config, examples=finetune_examples, steps=None, seed=seed)
        if finetune_lr is not None:
            ft_cfg = replace(ft_cfg, lr=finetune_lr, sparse_lr=finetune_lr)
        sums = supernet.extract_like(arch, adagrad_sums) if adagrad_sums else None
        try:
            examples = train(model, data, ft_cfg, adagrad_sums=sums).examples
        except TrainingDiverged as err:
            return EvalResult(arch.arch_id, Status.FAILED, metrics,
                              examples=min(err.step * train_config.batch_size,
                                           finetune_examples),
                              seconds=time.perf_counter() - start,
                              reason=f"fine-tuning diverged: {err}")
    scores = evaluate(model, data.valid, data.background_ctr,
                      batch_size=train_config.eval_batch_size)
    metrics.update({k: scores[k] for k in ("ne", "logloss", "auc", "calibration")})
    return EvalResult(arch.arch_id, Status.OK, metrics, examples=examples,
                      seconds=time.perf_counter() - start)
