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
launches (small batches on a GPU), not on a CPU. ``execution="segmented"`` runs the same
fixed-shape ops but only the path's, one CUDA graph per (block, op, layer) segment;
``benchmarks/RESULTS.md`` has the figures.

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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from ranknas.errors import ConfigError, TrainingDiverged
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.schema import Batch
from ranknas.evaluator.fast_train import build_optimizers, dense_adagrad
from ranknas.evaluator.training import evaluate
from ranknas.spaces.architecture import Architecture
from ranknas.supernet.masked_step import copy_adagrad_state
from ranknas.supernet.prefetch import PathPrefetcher
from ranknas.supernet.samplers import PathSampler
from ranknas.supernet.supernet import Supernet
from ranknas.supernet.train_config import SupernetTrainConfig, check_int

__all__ = ["SupernetTrainConfig", "SupernetTrainer"]  # the config is re-exported

CHECKPOINT_FORMAT = 1


def _optimizers(supernet: Supernet, cfg: SupernetTrainConfig) -> list[torch.optim.Optimizer]:
    """``[dense, embedding]`` optimizers (``build_optimizers`` when the table is sparse)."""
    table = supernet.embedding.table
    if table.sparse:
        return build_optimizers(supernet, cfg)
    dense, emb, slr = supernet.dense_parameters(), supernet.sparse_parameters(), \
        cfg.effective_sparse_lr
    if cfg.optimizer == "adagrad":
        return [dense_adagrad(dense, cfg.lr, cfg.eps, cfg.weight_decay),
                dense_adagrad(emb, slr, cfg.eps, 0.0)]
    if cfg.optimizer == "adam":
        return [torch.optim.Adam(dense, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay),
                torch.optim.Adam(emb, lr=slr, eps=cfg.eps)]
    return [torch.optim.SGD(dense, lr=cfg.lr, weight_decay=cfg.weight_decay),
            torch.optim.SGD(emb, lr=slr)]


class _Path(nn.Module):
    """``supernet`` fixed to one architecture: ``(dense [B, D], sparse [B, F]) -> [B]``."""

    def __init__(self, supernet: Supernet, arch: Architecture | None) -> None:
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
        self.fast: Any = None
        if config.execution in ("masked", "segmented"):
            from ranknas.supernet.masked_step import MaskedStep

            self.optimizers: list[torch.optim.Optimizer] = []
            self.masked = MaskedStep(self.supernet, optimizer=config.optimizer, lr=config.lr,
                                     sparse_lr=config.sparse_lr, eps=config.eps,
                                     weight_decay=config.weight_decay, compile=config.compile,
                                     cuda_graph=config.cuda_graph, precision=config.precision,
                                     segmented=config.execution == "segmented",
                                     width_halvings=config.width_halvings)
        elif config.embedding_update == "index":
            self.optimizers = []
            self._path = _Path(self.supernet, None)
            self._fast_state: dict[str, Any] | None = None
            self._open_fast().close()  # allocates the optimizer state
        else:
            self.optimizers = _optimizers(self.supernet, config)
        depth = config.prefetch_depth
        self.prefetcher = (PathPrefetcher(self.supernet, depth, config.execution != "sliced")
                           if depth else None)
        self.step = 0
        self.examples = 0
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self._order: torch.Tensor | None = None  # this epoch's permutation
        self._pos = 0
        cpu = torch.Generator().manual_seed(config.seed)
        self._model_rng = cpu.get_state()  # global CPU RNG seen by the model (dropout)

    def _open_fast(self) -> Any:
        """A ``fast_train.TrainStep`` over the current path, on this trainer's optimizer
        state. It patches the table's lookup, so it lives only while :meth:`train` runs."""
        from ranknas.evaluator.fast_train import TrainStep
        from ranknas.evaluator.training import TrainConfig

        cfg = self.config
        step = TrainStep(self._path, TrainConfig(
            examples=cfg.examples, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
            lr=cfg.lr, sparse_lr=cfg.sparse_lr, eps=cfg.eps, weight_decay=cfg.weight_decay,
            embedding_update="index"), self.device)
        (table,) = step.tables.values()
        if self._fast_state is None:
            self._fast_state = {"dense": step.dense_opt.sums, "table": table.state}
        else:
            step.dense_opt.sums, table.state = self._fast_state["dense"], self._fast_state["table"]
        return step

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
            of this call's last ``log_every`` steps; nan when no step was taken) of this call,
            and ``"captured"``: the segment variants captured as CUDA graphs so far (each
            costs ~0.1 s and its graph's memory once; 0 without ``cuda_graph`` segments).

        Raises:
            TrainingDiverged: a non-finite loss; ``step`` is its 1-based step. The weights
                are those before that step, except with ``execution`` masked / segmented or
                ``embedding_update="index"``, whose losses are checked every ``check_every``
                steps after the update (the message names the last step applied).
        """
        cfg = self.config
        if examples is None:
            budget = max(0, cfg.examples - self.examples)
        else:
            check_int("examples", examples, 0)
            budget = examples
        recent: deque[float] = deque(maxlen=cfg.log_every)
        pending: list[tuple[int, str, torch.Tensor | float]] = []  # losses not yet checked
        done = 0
        self.supernet.train()
        start = time.perf_counter()
        if self.config.embedding_update == "index" and self.config.execution == "sliced":
            self.fast = self._open_fast()
        paths = self.prefetcher
        if paths is not None:
            paths.start(self.sampler, self.step, getattr(self.masked, "prepare", None))
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.set_state(self._model_rng)
            try:
                while done < budget:
                    batch = self._next_batch(budget - done)
                    with record_function("ranknas.sample"):  # a profile's host phases
                        arch = (self.sampler.sample(self.step) if paths is None else
                                paths.take(self.step))
                    pending.append((self.step + 1, arch.arch_id, self._step(batch, arch)))
                    self.step += 1
                    self.examples += len(batch)
                    done += len(batch)
                    last = done >= budget
                    report = progress is not None and (self.step % cfg.log_every == 0 or last)
                    save = bool(cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                    if len(pending) >= cfg.check_every or report or save or last:
                        recent.extend(self._check(pending))
                        pending.clear()
                    if report:
                        progress({"step": self.step, "examples": self.examples,
                                  "loss": sum(recent) / len(recent),
                                  "seconds": time.perf_counter() - start})
                    if save:
                        self._model_rng = torch.random.default_generator.get_state()
                        self.save(cfg.checkpoint_path)
            finally:
                self._model_rng = torch.random.default_generator.get_state()
                if paths is not None:
                    paths.sync()
                if self.fast is not None:
                    self.fast.close()
                    self.fast = None
        segments = self.masked.segments if self.masked is not None else None
        return {"steps": self.step, "examples": self.examples,
                "seconds": time.perf_counter() - start,
                "loss": sum(recent) / len(recent) if recent else math.nan,
                "captured": segments.captured if segments is not None else 0}

    @staticmethod
    def _check(pending: list[tuple[int, str, torch.Tensor | float]]) -> list[float]:
        """The losses of ``pending`` steps as floats (one host sync); raises on the first
        non-finite one."""
        tensors = [v for _, _, v in pending if isinstance(v, torch.Tensor)]
        synced = iter(torch.stack(tensors).tolist() if tensors else [])
        values = [next(synced) if isinstance(v, torch.Tensor) else v for _, _, v in pending]
        for (step, arch_id, _), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                raise TrainingDiverged(step, f"loss is {value} on path {arch_id} (weights "
                                       f"after step {pending[-1][0]}: the update is part of "
                                       "the step)")
        return values

    def _step(self, batch: Batch, arch: Architecture) -> torch.Tensor | float:
        """One step; the loss as a device tensor where the update never waits for the host
        (masked, index), else as a float checked before the update."""
        if self.masked is not None:  # the update is part of the (captured) step
            return self.masked(batch.dense, batch.sparse, batch.labels, arch)
        if self.fast is not None:
            self._path.arch = arch
            return self.fast(batch)[0]
        logits = self.supernet(batch.dense, batch.sparse, arch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels.float())
        value = float(loss.detach())  # the sparse update syncs anyway: check before it
        if not math.isfinite(value):
            raise TrainingDiverged(self.step + 1, f"loss is {value} on path {arch.arch_id}")
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        return value

    def adagrad_sums(self) -> dict[str, torch.Tensor] | None:
        """Supernet parameter name -> its Adagrad accumulator (None unless Adagrad), for
        fine-tuning that continues this optimizer
        (:func:`~ranknas.supernet.scoring.score_on_supernet`)."""
        if self.config.optimizer != "adagrad":
            return None
        names = {id(p): n for n, p in self.supernet.named_parameters()}
        table = self.supernet.embedding.table.weight
        if self.masked is not None:
            pairs = list(zip(self.masked.params, self.masked.sums, strict=True))
            pairs.append((table, self.masked.table.state))
        elif self.config.embedding_update == "index":
            dense = self.supernet.dense_parameters()
            pairs = [*zip(dense, self._fast_state["dense"], strict=True),
                     (table, self._fast_state["table"])]
        else:
            pairs = [(p, opt.state[p]["sum"]) for opt in self.optimizers
                     for group in opt.param_groups for p in group["params"]
                     if "sum" in opt.state.get(p, {})]
        return {names[id(p)]: s for p, s in pairs if s is not None}

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
        if self.prefetcher is not None:  # the sampler's state after the last step taken
            self.prefetcher.sync()
        return {
            "format": CHECKPOINT_FORMAT,
            "space": self.supernet.space.name,
            "config": asdict(self.config),
            "supernet": self.supernet.state_dict(),
            "optimizers": self._optimizer_states(),
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
        if len(state["optimizers"]) != len(self._optimizer_states()):
            raise ConfigError("checkpoint", "optimizer groups differ from this trainer's")
        self.supernet.load_state_dict(state["supernet"])  # in place, as a CUDA graph needs
        if self.masked is not None:
            self.masked.load_state_dict(state["optimizers"][0])
        elif self.config.embedding_update == "index":
            copy_adagrad_state(self._fast_state, state["optimizers"][0])
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

    def _optimizer_states(self) -> list[Any]:
        if self.masked is not None:
            return [self.masked.state_dict()]
        if self.config.embedding_update == "index":
            return [dict(self._fast_state)]
        return [opt.state_dict() for opt in self.optimizers]

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

    def close(self) -> None:
        """Stop the path prefetch worker, if any (``train`` starts it again)."""
        if self.prefetcher is not None:
            self.prefetcher.close()

    def __enter__(self) -> SupernetTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
