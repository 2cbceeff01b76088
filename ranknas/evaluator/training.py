"""Train a standalone CTR model on pre-tensorized data and score it.

The model is any ``nn.Module`` called as ``model(dense [B, D], sparse [B, F]) -> logits [B]``.
Embedding tables built with ``sparse=True`` get a sparse-capable optimizer, so a step touches
only the rows looked up instead of the whole table (DESIGN.md, "Speed by design").
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ranknas.errors import ConfigError, TrainingDiverged
from ranknas.evaluator.data.base import CTRData, iter_batches
from ranknas.evaluator.data.schema import Batch
from ranknas.evaluator.fast_train import (
    EMBEDDING_UPDATES,
    PRECISIONS,
    TrainStep,
    precision_context,
)
from ranknas.evaluator.metrics import MetricState

__all__ = ["TrainConfig", "TrainResult", "evaluate", "train", "train_and_evaluate"]

OPTIMIZERS = ("adagrad", "adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model. Set exactly one of ``steps`` and ``examples``.

    Args:
        steps: Optimizer steps to take.
        examples: Training examples to process (the search budget unit); the last batch is
            trimmed so exactly this many are processed.
        batch_size: B, examples per step. When the train split has at least B examples, each
            epoch drops its final partial batch so every step sees exactly B.
        optimizer: ``adagrad``, ``adam`` or ``sgd``. Sparse embedding tables use Adagrad,
            SparseAdam or SGD respectively.
        lr: Learning rate of the dense parameters.
        sparse_lr: Learning rate of sparse embedding tables; ``None`` means ``lr``.
        weight_decay: L2 decay of the dense parameters only (the sparse optimizers do not
            support it).
        eps: Numerical epsilon of Adagrad/Adam (unused by SGD).
        seed: Seeds batch shuffling and the model's own randomness (dropout) during training.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...; the model and data are moved there once.
        eval_batch_size: Batch size of :func:`evaluate` in :func:`train_and_evaluate`.
        grad_clip: Clip the global gradient norm (dense and sparse together) to this value.
        log_every: Call ``progress`` every this many steps; the final loss averages the last
            ``log_every`` steps.
        check_every: Check the loss for nan/inf every this many steps (one host sync each).
            ``None``: every step on CPU (a sync costs nothing there), every 50 elsewhere.
        compile: ``torch.compile`` the model; sparse embedding lookups stay eager.
        precision: ``fp32``; ``tf32`` (float32 matmuls on TF32 tensor cores); ``bf16`` (bf16
            autocast of the forward pass, weights, optimizer and loss stay float32).
        embedding_update: ``sparse``: ``torch.sparse`` gradients and ``torch.optim``.
            ``index``: the same Adagrad/SGD update from fixed-shape index ops, with no host
            sync (``fast_train.IndexAdagrad``); needs optimizer ``adagrad`` or ``sgd``.
        fused_attention: Run ``nn.MultiheadAttention`` self-attention with small heads (head
            dim <= 4, <= 128 tokens) as one fused kernel on CUDA (``fast_train``).
        cuda_graph: Capture the whole step in a CUDA graph after 3 warm-up steps and replay
            it; needs a CUDA device and ``embedding_update="index"``.
    """

    steps: int | None = None
    examples: int | None = None
    batch_size: int = 1024
    optimizer: str = "adagrad"
    lr: float = 0.01
    sparse_lr: float | None = None
    weight_decay: float = 0.0
    eps: float = 1e-8
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 8192
    grad_clip: float | None = None
    log_every: int = 100
    check_every: int | None = None
    compile: bool = False
    precision: str = "fp32"
    embedding_update: str = "sparse"
    fused_attention: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.examples is None):
            raise ConfigError("steps", "set exactly one of steps or examples "
                              f"(got steps={self.steps}, examples={self.examples})")
        for name in ("steps", "examples"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        for name in ("batch_size", "eval_batch_size", "log_every"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.check_every is not None:
            _check_int("check_every", self.check_every, minimum=1)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, "
                              f"got {self.optimizer!r}")
        for name, allowed in (("precision", PRECISIONS), ("embedding_update", EMBEDDING_UPDATES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        if self.embedding_update == "index" and self.optimizer == "adam":
            raise ConfigError("embedding_update", "'index' needs optimizer adagrad or sgd")
        _check_float("lr", self.lr, positive=True)
        if self.sparse_lr is not None:
            _check_float("sparse_lr", self.sparse_lr, positive=True)
        _check_float("weight_decay", self.weight_decay, positive=False)
        _check_float("eps", self.eps, positive=True)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, positive=True)
        try:
            device_type = torch.device(self.device).type
        except (RuntimeError, TypeError) as exc:
            raise ConfigError("device", f"not a torch device ({exc}); use e.g. 'cpu' or "
                              "'cuda:0'") from None
        if self.cuda_graph and (device_type != "cuda" or self.embedding_update != "index"):
            raise ConfigError("cuda_graph", "needs a CUDA device and embedding_update='index' "
                              f"(got device={self.device!r}, "
                              f"embedding_update={self.embedding_update!r})")

    @property
    def effective_sparse_lr(self) -> float:
        return self.lr if self.sparse_lr is None else self.sparse_lr


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, *, positive: bool) -> None:
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        raise ConfigError(name, f"must be a finite number {'> 0' if positive else '>= 0'}, "
                          f"got {value!r}")


@dataclass(frozen=True)
class TrainResult:
    """What one training run did.

    Attributes:
        steps: Optimizer steps taken.
        examples: Training examples processed.
        seconds: Wall time of the training loop (data already on the device).
        final_loss: Mean training BCE over the last ``log_every`` steps.
        examples_per_second: ``examples / seconds``.
    """

    steps: int
    examples: int
    seconds: float
    final_loss: float
    examples_per_second: float


def _batches(data: Batch, cfg: TrainConfig, generator: torch.Generator) -> Iterator[Batch]:
    """Shuffled batches forever, a fresh permutation per epoch."""
    drop_last = len(data) >= cfg.batch_size
    while True:
        yield from iter_batches(data, cfg.batch_size, shuffle=True, generator=generator,
                                drop_last=drop_last)


def _resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} requested but CUDA is not available; use 'cpu'")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _on(batch: Batch, device: torch.device) -> Batch:
    return batch if batch.labels.device == device else batch.to(device)


def train(model: nn.Module, data: CTRData, config: TrainConfig, *,
          progress: Callable[[dict[str, float]], None] | None = None,
          adagrad_sums: Mapping[str, torch.Tensor] | None = None) -> TrainResult:
    """Train ``model`` in place on ``data.train`` with BCE-with-logits.

    The model and the train split are moved to ``config.device`` once; batches are slices of
    the on-device split in an order drawn from a generator seeded with ``config.seed``. The
    model's own global-RNG use (dropout) runs inside a forked RNG seeded with ``config.seed``,
    so the same seed gives bit-identical results on CPU and the caller's RNG is untouched.

    Divergence: losses are written to an on-device buffer and checked every ``check_every``
    steps and at the end, so the reported step is exact although detection may lag by up to
    ``check_every - 1`` steps on GPU. A non-finite gradient is caught at its own step when
    ``grad_clip`` is set (the norm is computed anyway); otherwise it surfaces as a non-finite
    loss one step later.

    Args:
        model: Called as ``model(dense [B, D], sparse [B, F]) -> logits [B]``.
        data: The dataset; only ``data.train`` is read.
        config: Budget, optimizer and device.
        progress: Called with ``{"step", "examples", "loss", "seconds"}`` every ``log_every``
            steps and after the last one (``loss`` = mean over the last ``log_every`` steps).
        adagrad_sums: Parameter name -> Adagrad accumulator to start from (e.g. a supernet's,
            sliced for an extracted model), so fine-tuning continues that optimizer instead
            of taking lr-sized first steps; parameters not named start at zero.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingDiverged: a loss (or, with clipping, the grad norm) was nan/inf; ``step`` is the
            1-based index of the first such step.
        ConfigError: the model returns a wrong shape, has no parameters, the train split is
            empty, or CUDA was asked for but is missing.
    """
    device = _resolve_device(config.device)
    train_split = _on(data.train, device)
    if len(train_split) == 0:
        raise ConfigError("data.train", "the training split is empty")
    model.to(device)
    model.train()
    step_fn = TrainStep(model, config, device)
    if adagrad_sums:
        step_fn.load_adagrad_sums(adagrad_sums)
    check_every = config.check_every or (1 if device.type == "cpu" else 50)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    # Losses (and grad norms) of steps not yet checked stay on the device until a flush.
    loss_buf = torch.zeros(check_every, device=device)
    norm_buf = torch.zeros(check_every, device=device)
    pending = 0
    recent: deque[float] = deque(maxlen=config.log_every)

    def flush(last_step: int) -> None:
        nonlocal pending
        losses = loss_buf[:pending].tolist()
        norms = norm_buf[:pending].tolist()
        first = last_step - pending + 1
        for i, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
            if not math.isfinite(loss):
                raise TrainingDiverged(first + i, f"loss is {loss}")
            if not math.isfinite(norm):
                raise TrainingDiverged(first + i, f"gradient norm is {norm}")
        recent.extend(losses)
        pending = 0

    budget = config.examples
    step = examples = 0
    done = False
    start = time.perf_counter()
    with _seeded_global_rng(device, config.seed), precision_context(config.precision):
        batches = _batches(train_split, config, generator)
        try:
            while not done:
                batch = next(batches)
                if budget is not None and examples + len(batch) > budget:
                    n = budget - examples  # trim the last batch to hit the budget exactly
                    batch = Batch(batch.dense[:n], batch.sparse[:n], batch.labels[:n])
                loss, norm = step_fn(batch)
                loss_buf[pending] = loss
                if norm is not None:
                    norm_buf[pending] = norm
                pending += 1
                step += 1
                examples += len(batch)
                done = step == config.steps if budget is None else examples >= budget
                log_now = progress is not None and (step % config.log_every == 0 or done)
                if pending == check_every or log_now or done:
                    flush(step)
                if log_now:
                    progress({"step": step, "examples": examples,
                              "loss": sum(recent) / len(recent),
                              "seconds": time.perf_counter() - start})
        finally:
            step_fn.close()
    seconds = time.perf_counter() - start  # the final flush synchronised the device
    return TrainResult(steps=step, examples=examples, seconds=seconds,
                       final_loss=sum(recent) / len(recent),
                       examples_per_second=examples / seconds if seconds > 0 else math.inf)


@contextmanager
def _seeded_global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the global CPU (and this CUDA device's) RNG inside a fork, restoring it after.

    Only for randomness inside the model (dropout) that cannot take a generator; the caller's
    RNG state is left exactly as it was.
    """
    cuda_devices = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.random.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, split: Batch, background_ctr: float,
             batch_size: int = 8192) -> dict[str, float | int]:
    """Score ``model`` on a whole split in eval mode without gradients.

    The split is moved once to the device of the model's parameters; the model's train/eval
    mode is restored afterwards.

    Args:
        model: Called as ``model(dense [B, D], sparse [B, F]) -> logits [B]``.
        split: All examples to score, e.g. ``data.valid``.
        background_ctr: Click rate of the TRAINING labels (``data.background_ctr``), the NE
            normaliser; not the CTR of ``split``.
        batch_size: Examples per forward pass.

    Returns:
        ``{"ne", "logloss", "auc", "calibration", "ctr", "count"}`` (see ``MetricState``).
    """
    _check_int("batch_size", batch_size, minimum=1)
    split = _on(split, _model_device(model))
    was_training = model.training
    model.eval()
    try:
        state = MetricState()
        for batch in iter_batches(split, batch_size):
            state.update(model(batch.dense, batch.sparse), batch.labels)
        return state.compute(background_ctr)
    finally:
        model.train(was_training)


def train_and_evaluate(model: nn.Module, data: CTRData,
                       config: TrainConfig) -> dict[str, float | int]:
    """Train on ``data.train``, then score on ``data.valid`` with the training-label CTR.

    Returns:
        The validation metrics of :func:`evaluate` plus ``examples``, ``seconds`` and ``steps``
        of training, ``train_loss`` and ``examples_per_second``.
    """
    result = train(model, data, config)
    metrics = evaluate(model, data.valid, data.background_ctr,
                       batch_size=config.eval_batch_size)
    return {**metrics, "examples": result.examples, "seconds": result.seconds,
            "steps": result.steps, "train_loss": result.final_loss,
            "examples_per_second": result.examples_per_second}
