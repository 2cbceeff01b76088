"""How a :class:`~ranknas.supernet.SupernetTrainer` trains: budget, optimizer, execution."""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass
from typing import Any

import torch

from ranknas.errors import ConfigError
from ranknas.evaluator.training import OPTIMIZERS

#: How a supernet step runs (see :class:`SupernetTrainConfig`).
EXECUTIONS = ("sliced", "masked", "segmented")
#: The fields that choose how (not what) a supernet trains: what one-shot's ``supernet_train``
#: and rank-corr's ``--supernet-train`` may set.
EXECUTION_OPTIONS = ("execution", "embedding_update", "check_every", "compile", "cuda_graph",
                     "precision", "width_halvings", "path_prefetch")

__all__ = ["EXECUTIONS", "EXECUTION_OPTIONS", "SupernetTrainConfig", "check_int"]


def check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"supernet.train.{name}",
                          f"must be an integer >= {minimum}, got {value!r}")


def _float(name: str, value: Any, positive: bool = True) -> None:
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        raise ConfigError(f"supernet.train.{name}", "must be a finite number "
                          f"{'> 0' if positive else '>= 0'}, got {value!r}")


@dataclass(frozen=True)
class SupernetTrainConfig:
    """How to train a supernet.

    Args:
        examples: Training examples to process in all (the one-shot budget unit).
        batch_size: B, examples per step.
        optimizer: ``adagrad``, ``adam`` or ``sgd`` (sparse tables: Adagrad, SparseAdam, SGD).
        lr: Learning rate of the dense parameters.
        sparse_lr: Learning rate of the embedding table; ``None`` means ``lr``.
        weight_decay: L2 decay of the dense parameters only.
        eps: Epsilon of Adagrad/Adam.
        seed: Seeds batch shuffling and the model's own randomness (dropout).
        device: ``cpu``, ``cuda``, ``cuda:1``, ...
        checkpoint_every: Save to ``checkpoint_path`` every this many steps; ``None``: never.
        checkpoint_path: Where periodic checkpoints go (needed with ``checkpoint_every``).
        log_every: Call ``progress`` every this many steps; the loss averages over as many.
        eval_batch_size: Batch size of :meth:`SupernetTrainer.score`.
        check_every: With a fixed-shape ``execution`` or ``embedding_update="index"``, check the
            loss for NaN/inf every this many steps, in one host sync; above 1 the host queues
            steps ahead of the GPU, and a divergence is caught up to this many steps late.
        execution: ``sliced`` (each path at its own shapes), ``masked`` (every candidate op
            at fixed shapes: one graph for every path) or ``segmented`` (only the path's ops,
            each at fixed shapes: one graph per (block, op, layer)).
        embedding_update: ``sliced`` only: ``sparse`` (``torch.sparse`` row gradients and
            ``torch.optim``) or ``index`` (row-wise Adagrad/SGD and ``foreach`` dense
            updates from :mod:`ranknas.evaluator.fast_train`: no host sync, fewer kernels).
        compile: ``masked`` only: ``torch.compile`` the step's forward and loss.
        cuda_graph: ``masked`` / ``segmented`` only, CUDA only: capture the step in one CUDA
            graph (masked) or each segment's forward and backward (segmented; with a path
            prefetch worker, a step then launches its segments' graphs joined into one:
            :mod:`ranknas.supernet.graph_chain`).
        precision: ``masked`` / ``segmented`` only: ``fp32``, ``tf32`` or ``bf16``.
        width_halvings: ``segmented`` only: how many times the fixed width of a merged
            input, and of a linear-3d / transformer output, may halve to fit a narrower
            path (0: always the widest). Each halving cuts a narrow path's bytes and FLOPs
            and adds a variant of a segment to capture.
        path_prefetch: Draw this many paths ahead in a worker process (and, with a
            fixed-shape ``execution``, encode them there), off the step's host time; 0 draws
            each on the spot. ``None``: 4 for a fixed-shape execution on CUDA (where a step's
            host work can bound it) outside daemonic processes, else 0. Either way the paths
            are the same.
    """

    examples: int = 1_000_000
    batch_size: int = 1024
    optimizer: str = "adagrad"
    lr: float = 0.01
    sparse_lr: float | None = None
    weight_decay: float = 0.0
    eps: float = 1e-8
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int | None = None
    checkpoint_path: str | None = None
    log_every: int = 100
    eval_batch_size: int = 8192
    check_every: int = 1
    execution: str = "sliced"
    embedding_update: str = "sparse"
    compile: bool = False
    cuda_graph: bool = False
    precision: str = "fp32"
    width_halvings: int = 2
    path_prefetch: int | None = None

    def __post_init__(self) -> None:
        for name in ("examples", "batch_size", "log_every", "eval_batch_size", "check_every"):
            check_int(name, getattr(self, name), 1)
        check_int("width_halvings", self.width_halvings, 0)
        check_int("path_prefetch", self.path_prefetch, 0, optional=True)
        check_int("seed", self.seed, 0)
        check_int("checkpoint_every", self.checkpoint_every, 1, optional=True)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("supernet.train.optimizer", f"must be one of "
                              f"{', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _float("lr", self.lr)
        if self.sparse_lr is not None:
            _float("sparse_lr", self.sparse_lr)
        _float("weight_decay", self.weight_decay, positive=False)
        _float("eps", self.eps)
        if self.checkpoint_every is not None and not self.checkpoint_path:
            raise ConfigError("supernet.train.checkpoint_path",
                              "needed when checkpoint_every is set")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError("supernet.train.device", f"not a torch device ({exc}); use "
                              "e.g. 'cpu' or 'cuda:0'") from None
        self._check_execution(device)

    def _check_execution(self, device: torch.device) -> None:
        where = "supernet.train"
        if self.execution not in EXECUTIONS:
            raise ConfigError(f"{where}.execution", f"one of {', '.join(EXECUTIONS)}, got "
                              f"{self.execution!r}")
        fast = {"compile": self.compile, "cuda_graph": self.cuda_graph,
                "precision": self.precision != "fp32"}
        if self.embedding_update not in ("sparse", "index"):
            raise ConfigError(f"{where}.embedding_update", "sparse or index, got "
                              f"{self.embedding_update!r}")
        if self.embedding_update == "index" and self.optimizer not in ("adagrad", "sgd"):
            raise ConfigError(f"{where}.embedding_update", "index supports adagrad and sgd, "
                              f"not {self.optimizer!r}")
        if self.execution != "sliced" and self.embedding_update != "sparse":
            raise ConfigError(f"{where}.embedding_update", f"execution: {self.execution} "
                              "always updates embedding rows by index; leave "
                              "embedding_update unset")
        if self.execution == "sliced":
            for name, on in fast.items():
                if on:
                    raise ConfigError(f"{where}.{name}", "needs execution: masked or "
                                      "segmented (a sliced step has other shapes on every "
                                      "path)")
            return
        if self.execution == "segmented" and self.compile:
            raise ConfigError(f"{where}.compile", "execution: segmented captures each "
                              "segment in a CUDA graph instead; set compile: false")
        if self.optimizer not in ("adagrad", "sgd"):
            raise ConfigError(f"{where}.optimizer", f"execution: {self.execution} supports "
                              f"adagrad and sgd, not {self.optimizer!r}")
        if self.precision not in ("fp32", "tf32", "bf16"):
            raise ConfigError(f"{where}.precision", f"fp32, tf32 or bf16, got "
                              f"{self.precision!r}")
        if self.cuda_graph and device.type != "cuda":
            raise ConfigError(f"{where}.cuda_graph", f"needs a CUDA device, not {self.device!r}")

    @classmethod
    def following(cls, train: Any, examples: int, seed: int, lr: float | None = None,
                  **fields: Any) -> SupernetTrainConfig:
        """The supernet counterpart of a run's ``TrainConfig``: its batch size, optimizer,
        decay, eps, device and eval batch size. ``lr`` overrides the dense learning rate (None:
        the run's), and the table's too unless the run sets ``sparse_lr``; ``fields`` set the
        rest."""
        lr = train.lr if lr is None else lr
        return cls(examples=examples, seed=seed, batch_size=train.batch_size,
                   optimizer=train.optimizer, weight_decay=train.weight_decay, eps=train.eps,
                   device=train.device, eval_batch_size=train.eval_batch_size, lr=lr,
                   sparse_lr=lr if train.sparse_lr is None else train.sparse_lr, **fields)

    @property
    def prefetch_depth(self) -> int:
        """:attr:`path_prefetch` with ``None`` resolved for this device and execution."""
        if self.path_prefetch is not None:
            return self.path_prefetch
        fixed = self.execution != "sliced" and torch.device(self.device).type == "cuda"
        # a daemonic process (a multiprocessing pool's worker) may not start one
        return 4 if fixed and not multiprocessing.current_process().daemon else 0

    @property
    def effective_sparse_lr(self) -> float:
        return self.lr if self.sparse_lr is None else self.sparse_lr
