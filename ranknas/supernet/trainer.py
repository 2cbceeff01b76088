"""Train a :class:`~ranknas.supernet.Supernet` one sampled path per step, with checkpoints.

Each step draws ``arch = sampler.sample(step)``, runs ``supernet(dense [B, D], sparse [B, F],
arch) -> logits [B]``, takes BCE-with-logits against ``labels [B]`` and steps two optimizers:
one over the dense (non-embedding) parameters and one over the fused embedding table
(``torch.sparse`` row gradients and Adagrad / SparseAdam / SGD when the table is
``sparse=True``, the default; the dense-gradient variants otherwise). Gradients are zeroed
with ``set_to_none``: a sliced weight gets a full-size gradient, and an op the path does not
run gets none, so its optimizer state is left untouched. (Adam still moves the unused
entries of a used weight by its momentum; Adagrad and SGD do not.)

``execution="masked"`` runs every step through :class:`~ranknas.supernet.MaskedStep` instead:
the same parameters and the same math (Adagrad or SGD; the table gets row-wise updates), at
shapes fixed for every path, so ``compile`` and ``cuda_graph`` capture one step for all paths.
It computes every candidate op at its widest, which pays off where eager steps are bound by
launches (small batches on a GPU), not on a CPU; ``benchmarks/RESULTS.md`` has the figures.

Examples processed are the budget unit. Batches come from a seeded permutation of the train
split per epoch (final partial batch dropped when the split holds at least B examples); a
budget that ends mid-batch trims the batch, and the next call resumes from the following
example. A checkpoint holds everything that decides the next step (weights, optimizer
states, sampler state, counters, the shuffling generator, the current permutation and the
model's own RNG state), so a resumed run is bit-identical on CPU to an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ranknas.errors import ConfigError, TrainingDiverged
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.schema import Batch
from ranknas.evaluator.fast_train import build_optimizers
from ranknas.evaluator.training import OPTIMIZERS, evaluate
from ranknas.spaces.architecture import Architecture
from ranknas.supernet.samplers import PathSampler
from ranknas.supernet.supernet import Supernet

__all__ = ["SupernetTrainConfig", "SupernetTrainer"]

CHECKPOINT_FORMAT = 1


def _int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
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
        execution: ``sliced`` (each path at its own shapes) or ``masked`` (fixed shapes).
        compile: ``masked`` only: ``torch.compile`` the step's forward and loss.
        cuda_graph: ``masked`` only, CUDA only: capture the step in one CUDA graph.
        precision: ``masked`` only: ``fp32``, ``tf32`` or ``bf16``.
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
    execution: str = "sliced"
    compile: bool = False
    cuda_graph: bool = False
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("examples", "batch_size", "log_every", "eval_batch_size"):
            _int(name, getattr(self, name), 1)
        _int("seed", self.seed, 0)
        _int("checkpoint_every", self.checkpoint_every, 1, optional=True)
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
        if self.execution not in ("sliced", "masked"):
            raise ConfigError(f"{where}.execution", f"sliced or masked, got {self.execution!r}")
        fast = {"compile": self.compile, "cuda_graph": self.cuda_graph,
                "precision": self.precision != "fp32"}
        if self.execution == "sliced":
            for name, on in fast.items():
                if on:
                    raise ConfigError(f"{where}.{name}", "needs execution: masked (a sliced "
                                      "step has other shapes on every path)")
            return
        if self.optimizer not in ("adagrad", "sgd"):
            raise ConfigError(f"{where}.optimizer", "execution: masked supports adagrad and "
                              f"sgd, not {self.optimizer!r}")
        if self.precision not in ("fp32", "tf32", "bf16"):
            raise ConfigError(f"{where}.precision", f"fp32, tf32 or bf16, got "
                              f"{self.precision!r}")
        if self.cuda_graph and device.type != "cuda":
            raise ConfigError(f"{where}.cuda_graph", f"needs a CUDA device, not {self.device!r}")

    @property
    def effective_sparse_lr(self) -> float:
        return self.lr if self.sparse_lr is None else self.sparse_lr


def _optimizers(supernet: Supernet, cfg: SupernetTrainConfig) -> list[torch.optim.Optimizer]:
    """``[dense, embedding]`` optimizers (``build_optimizers`` when the table is sparse)."""
    table = supernet.embedding.table
    if table.sparse:
        return build_optimizers(supernet, cfg)
    dense, emb, slr = supernet.dense_parameters(), supernet.sparse_parameters(), \
        cfg.effective_sparse_lr
    if cfg.optimizer == "adagrad":
        return [torch.optim.Adagrad(dense, lr=cfg.lr, eps=cfg.eps,
                                    weight_decay=cfg.weight_decay),
                torch.optim.Adagrad(emb, lr=slr, eps=cfg.eps)]
    if cfg.optimizer == "adam":
        return [torch.optim.Adam(dense, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay),
                torch.optim.Adam(emb, lr=slr, eps=cfg.eps)]
    return [torch.optim.SGD(dense, lr=cfg.lr, weight_decay=cfg.weight_decay),
            torch.optim.SGD(emb, lr=slr)]


class _Path(nn.Module):
    """``supernet`` fixed to one architecture: ``(dense [B, D], sparse [B, F]) -> [B]``."""

    def __init__(self, supernet: Supernet, arch: Architecture) -> None:
        super().__init__()
        self.supernet = supernet
        self.arch = arch

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.supernet(dense, sparse, self.arch)


class SupernetTrainer:
    """Trains ``supernet`` on ``data.train``, one path from ``sampler`` per step.

    Args:
        supernet: The shared-weight supernet (moved to ``config.device``).
        data: The dataset; training reads ``data.train``, :meth:`score` any split.
        sampler: Chooses the path of every step.
        config: Budget, optimizer, device and checkpointing.

    Raises:
        ConfigError: CUDA asked for but missing, or an empty train split.
    """

    def __init__(self, supernet: Supernet, data: CTRData, sampler: PathSampler,
                 config: SupernetTrainConfig) -> None:
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("supernet.train.device", f"{config.device!r} requested but CUDA "
                              "is not available; use 'cpu'")
        if len(data.train) == 0:
            raise ConfigError("data.train", "the training split is empty")
        self.device = device
        self.supernet = supernet.to(device)
        self.data = data
        self.train_split = data.train.to(device)
        self.sampler = sampler
        self.config = config
        self.masked: Any = None
        if config.execution == "masked":
            from ranknas.supernet.masked_step import MaskedStep

            self.optimizers: list[torch.optim.Optimizer] = []
            self.masked = MaskedStep(self.supernet, optimizer=config.optimizer, lr=config.lr,
                                     sparse_lr=config.sparse_lr, eps=config.eps,
                                     weight_decay=config.weight_decay, compile=config.compile,
                                     cuda_graph=config.cuda_graph, precision=config.precision)
        else:
            self.optimizers = _optimizers(self.supernet, config)
        self.step = 0
        self.examples = 0
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self._order: torch.Tensor | None = None  # this epoch's permutation
        self._pos = 0
        cpu = torch.Generator().manual_seed(config.seed)
        self._model_rng = cpu.get_state()  # global CPU RNG seen by the model (dropout)

    # -- data -----------------------------------------------------------------------------
    def _next_batch(self, limit: int) -> Batch:
        """The next shuffled batch of at most ``min(B, limit)`` examples."""
        n, size = len(self.train_split), self.config.batch_size
        need = min(size, n)  # drop the final partial batch of an epoch when n >= B
        if self._order is None or self._pos + need > n:
            self._order = torch.randperm(n, generator=self.generator, device=self.device)
            self._pos = 0
        take = min(size, limit, n - self._pos)
        idx = self._order[self._pos:self._pos + take]
        self._pos += take
        s = self.train_split
        return Batch(s.dense[idx], s.sparse[idx], s.labels[idx])

    # -- training -------------------------------------------------------------------------
    def train(self, examples: int | None = None,
              progress: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Train on ``examples`` more examples (``None``: up to ``config.examples`` in all).

        Args:
            examples: Examples to process in this call.
            progress: Called with ``{"step", "examples", "loss", "seconds"}`` every
                ``log_every`` steps and after the last one.

        Returns:
            ``{"steps", "examples"}`` (totals so far), ``"seconds"`` and ``"loss"`` (mean BCE
            of this call's last ``log_every`` steps; nan when no step was taken) of this call.

        Raises:
            TrainingDiverged: a non-finite loss; ``step`` is its 1-based step (the weights
                are those before that step; after it with ``execution="masked"``).
        """
        cfg = self.config
        if examples is None:
            budget = max(0, cfg.examples - self.examples)
        else:
            _int("examples", examples, 0)
            budget = examples
        recent: deque[float] = deque(maxlen=cfg.log_every)
        done = 0
        self.supernet.train()
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.set_state(self._model_rng)
            try:
                while done < budget:
                    batch = self._next_batch(budget - done)
                    arch = self.sampler.sample(self.step)
                    recent.append(self._step(batch, arch))
                    self.step += 1
                    self.examples += len(batch)
                    done += len(batch)
                    last = done >= budget
                    if progress is not None and (self.step % cfg.log_every == 0 or last):
                        progress({"step": self.step, "examples": self.examples,
                                  "loss": sum(recent) / len(recent),
                                  "seconds": time.perf_counter() - start})
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self._model_rng = torch.random.default_generator.get_state()
                        self.save(cfg.checkpoint_path)
            finally:
                self._model_rng = torch.random.default_generator.get_state()
        return {"steps": self.step, "examples": self.examples,
                "seconds": time.perf_counter() - start,
                "loss": sum(recent) / len(recent) if recent else math.nan}

    def _step(self, batch: Batch, arch: Architecture) -> float:
        if self.masked is not None:  # the update is part of the (captured) step
            value = float(self.masked(batch.dense, batch.sparse, batch.labels, arch))
            if not math.isfinite(value):
                raise TrainingDiverged(self.step + 1, f"loss is {value} on path "
                                       f"{arch.arch_id} (masked: weights after the step)")
            return value
        logits = self.supernet(batch.dense, batch.sparse, arch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels.float())
        value = float(loss.detach())  # a host sync per step; the loss must be checked anyway
        if not math.isfinite(value):
            raise TrainingDiverged(self.step + 1, f"loss is {value} on path {arch.arch_id}")
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        return value

    # -- scoring --------------------------------------------------------------------------
    def score(self, arch: Architecture, split: str = "valid") -> dict[str, float | int]:
        """NE, log loss and AUC of the supernet on path ``arch`` over a whole split.

        Runs in eval mode without gradients (mode restored after); NE's background CTR is
        the train split's click rate.

        Returns:
            ``{"ne", "logloss", "auc", "calibration", "ctr", "count"}``.
        """
        return evaluate(_Path(self.supernet, arch), self.data.split(split),
                        self.data.background_ctr, batch_size=self.config.eval_batch_size)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the next step, as tensors and plain containers."""
        return {
            "format": CHECKPOINT_FORMAT,
            "space": self.supernet.space.name,
            "config": asdict(self.config),
            "supernet": self.supernet.state_dict(),
            "optimizers": ([self.masked.state_dict()] if self.masked is not None
                           else [opt.state_dict() for opt in self.optimizers]),
            "sampler": self.sampler.state_dict(),
            "step": self.step,
            "examples": self.examples,
            "generator": self.generator.get_state(),
            "order": self._order if self._order is not None else torch.empty(0, dtype=torch.long),
            "has_order": self._order is not None,
            "pos": self._pos,
            "model_rng": self._model_rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same space, optimizer and sampler kind)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError("checkpoint", f"unknown checkpoint format {state.get('format')!r}")
        if state["space"] != self.supernet.space.name:
            raise ConfigError("checkpoint", f"checkpoint is for space {state['space']!r}, not "
                              f"{self.supernet.space.name!r}")
        if len(state["optimizers"]) != (1 if self.masked is not None else len(self.optimizers)):
            raise ConfigError("checkpoint", "optimizer groups differ from this trainer's")
        self.supernet.load_state_dict(state["supernet"])  # in place, as a CUDA graph needs
        if self.masked is not None:
            self.masked.load_state_dict(state["optimizers"][0])
        else:
            for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
                opt.load_state_dict(opt_state)
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.examples = int(state["examples"])
        self.generator.set_state(state["generator"].cpu())
        self._order = state["order"].to(self.device) if state["has_order"] else None
        self._pos = int(state["pos"])
        self._model_rng = state["model_rng"].cpu()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint atomically (temporary file, then rename); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load(self, path: str | os.PathLike[str]) -> None:
        """Resume from a checkpoint written by :meth:`save` (``weights_only`` loading)."""
        state = torch.load(Path(path), map_location=self.device, weights_only=True)
        self.load_state_dict(state)
