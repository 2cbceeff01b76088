"""One supernet training step at fixed shapes: compilable once, capturable in one CUDA graph.

``MaskedStep(supernet, ...)(dense [B, D], sparse [B, F], labels [B], arch) -> loss`` runs the
path of ``arch`` through :func:`ranknas.supernet.masked.masked_forward` (same parameters as
the sliced ``supernet(dense, sparse, arch)``), BCE-with-logits, backward, and the update:

- dense parameters: Adagrad (:func:`~ranknas.evaluator.fused_adagrad.adagrad_`, one pass per
  tensor on CUDA; ``torch.optim.Adagrad``'s math, no lr decay) or SGD. Every parameter gets
  a gradient here, but an op the path does not run gets exactly zero, and
  ``0 / (sqrt(state) + eps) = 0`` leaves it and its state unchanged, as the sliced trainer
  does by skipping it. Weight decay is gated by the path's per-op "active" flag, so it too
  touches only the ops the path runs (the sliced trainer's behaviour);
- the fused embedding table: :class:`~ranknas.evaluator.fast_train.IndexAdagrad` on the rows
  looked up (the lookup returns a detached leaf; fixed-shape sort / cumsum / ``index_add_``).

The architecture enters as the two path tensors, copied into static buffers, so every path
replays the same compiled graph (``compile=True``: ``torch.compile(fullgraph=True)`` of forward
and loss) and, with ``cuda_graph=True``, the same CUDA graph, captured after a few eager
warm-up steps. A batch of another size than the first runs eagerly, outside both.

``segmented=True`` runs only the path's ops instead
(:class:`~ranknas.supernet.segmented_step.SegmentedStep`), and ``cuda_graph`` then captures
each (block, op, layer) segment, forward and backward with the dense update of its
parameters, on first use (at the first batch size; another size runs them eagerly); the
embedding lookup and its update run eagerly around them. Only the ops the path runs (their
parameters got a gradient) are updated.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from ranknas.errors import ConfigError
from ranknas.evaluator.fast_train import (
    GRAPH_WARMUP_STEPS,
    PRECISIONS,
    IndexAdagrad,
    precision_context,
)
from ranknas.evaluator.fused_adagrad import dense_update_
from ranknas.evaluator.sparse_rows import gather_rows
from ranknas.spaces.architecture import Architecture
from ranknas.supernet.masked import program
from ranknas.supernet.masked_base import Slot
from ranknas.supernet.masked_path import PathTensors
from ranknas.supernet.segmented_step import SegmentedStep
from ranknas.supernet.supernet import Supernet

__all__ = ["MaskedStep", "copy_adagrad_state"]


@torch.no_grad()
def copy_adagrad_state(into: dict, saved: dict) -> None:
    """Copy Adagrad state ``{"dense": [sums] or None, "table": sums or None}`` into ``into``'s
    buffers, in place: a captured CUDA graph keeps reading them.

    Raises:
        ConfigError: one side is Adagrad and the other is not.
    """
    if (into["dense"] is None) != (saved["dense"] is None):
        raise ConfigError("checkpoint", "optimizer kinds differ from this trainer's")
    for buf, value in zip(into["dense"] or [], saved["dense"] or [], strict=True):
        buf.copy_(value)
    if into["table"] is not None:
        into["table"].copy_(saved["table"])


class MaskedStep:
    """Forward, loss, backward and optimizer update of one supernet path at fixed shapes.

    Args:
        supernet: The supernet to train (in place).
        optimizer: ``adagrad`` or ``sgd`` (dense and embedding alike).
        lr: Learning rate of the dense parameters.
        sparse_lr: Learning rate of the embedding table; None means ``lr``.
        eps: Adagrad epsilon.
        weight_decay: L2 decay of the dense parameters of the ops the path runs.
        compile: ``torch.compile(fullgraph=True, dynamic=False)`` the forward and loss.
        cuda_graph: Capture the whole step in a CUDA graph (needs a CUDA supernet).
        precision: ``fp32``, ``tf32`` (TF32 matmuls) or ``bf16`` (autocast of the forward).
        backend: ``torch.compile`` backend (``inductor``; ``eager`` / ``aot_eager`` to test).
        segmented: Run only the path's ops, segment by segment (no ``compile``).
        width_halvings: ``segmented`` only: see
            :class:`~ranknas.supernet.segmented_step.SegmentedStep`'s ``halvings``.

    Raises:
        ConfigError: an unknown optimizer or precision, ``cuda_graph`` off CUDA, or
            ``compile`` with ``segmented``.
    """

    def __init__(self, supernet: Supernet, *, optimizer: str = "adagrad", lr: float = 0.01,
                 sparse_lr: float | None = None, eps: float = 1e-8, weight_decay: float = 0.0,
                 compile: bool = False, cuda_graph: bool = False, precision: str = "fp32",
                 backend: str = "inductor", segmented: bool = False,
                 width_halvings: int = 2) -> None:
        if segmented and compile:
            raise ConfigError("masked.compile", "segmented execution graphs each segment "
                              "instead; set compile: false")
        if optimizer not in ("adagrad", "sgd"):
            raise ConfigError("masked.optimizer", f"adagrad or sgd, got {optimizer!r}")
        if precision not in PRECISIONS:
            raise ConfigError("masked.precision", f"one of {PRECISIONS}, got {precision!r}")
        self.device = supernet.head_bias.device
        if cuda_graph and self.device.type != "cuda":
            raise ConfigError("masked.cuda_graph", f"needs a CUDA supernet, not {self.device}")
        self.supernet, self.program = supernet, program(supernet)
        self.lr, self.eps, self.wd = lr, eps, weight_decay
        self.precision, self.cuda_graph = precision, cuda_graph
        self.autocast = self._autocast()
        self.params = supernet.dense_parameters()
        self.sums = ([torch.zeros_like(p) for p in self.params] if optimizer == "adagrad"
                     else None)
        self._sum_of = ({} if self.sums is None else
                        {id(p): s for p, s in zip(self.params, self.sums, strict=True)})
        # segment graphs are captured inside the autocast region: its cache must be off
        self.segments = (SegmentedStep(supernet, self._segment_update, cuda_graph,
                                       lambda: self._autocast(cache=False), width_halvings)
                         if segmented else None)
        slots = self.program.active_slots()
        owner = {id(p): slots[key] for key, m in supernet.elastic.items()
                 for p in m.parameters()}
        self.active: list[Slot | None] = [owner.get(id(p)) for p in self.params]
        table = supernet.embedding.table.weight
        self.table = IndexAdagrad(table, lr if sparse_lr is None else sparse_lr, eps,
                                  adagrad=optimizer == "adagrad")
        self.loss_fn = (torch.compile(self._loss, fullgraph=True, dynamic=False,
                                      backend=backend) if compile else self._loss)
        self.size: int | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def _autocast(self, cache: bool = True) -> AbstractContextManager:
        """bf16 autocast of the forward ops when ``precision`` is bf16, else a no-op."""
        if self.precision != "bf16":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=cache)

    def state_dict(self) -> dict[str, torch.Tensor | list[torch.Tensor] | None]:
        """Optimizer state: Adagrad sums of the dense parameters and of the table."""
        return {"dense": self.sums, "table": self.table.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output in place (buffers a CUDA graph reads stay put)."""
        copy_adagrad_state(self.state_dict(), state)

    def _loss(self, dense: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor,
              floats: torch.Tensor, ints: torch.Tensor) -> torch.Tensor:
        logits = self.program.forward_embedded(self.supernet, dense, rows, floats, ints)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    @torch.no_grad()
    def _update(self, floats: torch.Tensor, ints: torch.Tensor) -> None:
        grads = [p.grad for p in self.params]
        if self.wd:  # only on the ops the path runs (their "active" flag), as when sliced
            path = (floats, ints)
            grads = [g.add(p, alpha=self.wd) if s is None else g + (self.wd * s.view(path)) * p
                     for g, p, s in zip(grads, self.params, self.active, strict=True)]
        dense_update_(self.params, grads, self.sums, self.lr, self.eps)

    @torch.no_grad()
    def _segment_update(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """The update of one segment's parameters: every op it runs is active."""
        dense_update_(params, grads, None if self.sums is None else
                      [self._sum_of[id(p)] for p in params], self.lr, self.eps, self.wd)

    def _step(self, dense: torch.Tensor, sparse: torch.Tensor, labels: torch.Tensor,
              floats: torch.Tensor, ints: torch.Tensor,
              fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        emb = self.supernet.embedding
        ids = sparse + emb.offsets
        rows = gather_rows(emb.table.weight.detach(), ids).requires_grad_()
        for p in self.params:
            p.grad = None
        with self.autocast, record_function("ranknas.forward"):
            loss = fn(dense, rows, labels, floats, ints)
        with record_function("ranknas.backward"):
            loss.backward()
        with record_function("ranknas.update"):
            coalesced = self.table.coalesce(ids, rows.grad)
            self._update(floats, ints)
            self.table.step(*coalesced)
        return loss.detach()

    def _segmented_step(self, dense: torch.Tensor, sparse: torch.Tensor, labels: torch.Tensor,
                        path: PathTensors) -> torch.Tensor:
        emb = self.supernet.embedding
        ids = sparse + emb.offsets
        rows = gather_rows(emb.table.weight.detach(), ids)
        with record_function("ranknas.forward"):  # and backward, and the dense update
            loss, grad = self.segments(dense, rows, labels, path)
        with record_function("ranknas.update"):
            self.table.step(*self.table.coalesce(ids, grad))
        return loss

    def prepare(self, arch: Architecture) -> None:
        """Plan a later step of ``arch`` while this one runs: a segmented step with CUDA
        graphs joins its graphs into one launch ahead
        (:meth:`~ranknas.supernet.segmented_step.SegmentedStep.prepare`); otherwise a
        no-op."""
        if self.segments is not None and self.segments.chain is not None:
            self.segments.prepare(self.program.encode(self.supernet, arch))

    def __call__(self, dense: torch.Tensor, sparse: torch.Tensor, labels: torch.Tensor,
                 arch: Architecture | PathTensors) -> torch.Tensor:
        """One step on ``arch`` (or its encoded path); returns the loss (0-dim, on device).

        Raises:
            ConfigError: a segmented step given path tensors instead of an architecture.
        """
        if self.segments is not None:
            if not isinstance(arch, Architecture):
                raise ConfigError("masked.segmented", "a segmented step needs the "
                                  "Architecture (it runs only the path's ops)")
            with record_function("ranknas.encode"):
                path = self.program.encode(self.supernet, arch)
            with precision_context(self.precision):
                return self._segmented_step(dense, sparse, labels, path)
        path = arch if isinstance(arch, PathTensors) else self.program.encode(self.supernet,
                                                                               arch)
        with precision_context(self.precision):
            if self.size is None:
                self.size = len(labels)
            if len(labels) != self.size:  # e.g. a trimmed last batch: eager, uncompiled
                return self._step(dense, sparse, labels, *path.tensors, self._loss)
            if not self.cuda_graph:
                return self._step(dense, sparse, labels, *path.tensors, self.loss_fn)
            return self._graph_step((dense, sparse, labels, *path.tensors))

    def _graph_step(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        self.calls += 1
        if self.graph is None and self.calls <= GRAPH_WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self._step(*inputs, self.loss_fn)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        if self.graph is None:
            self.static = tuple(t.clone() for t in inputs)
            for p in self.params:
                p.grad = None
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._step(*self.static, self.loss_fn)
        else:
            for buf, t in zip(self.static, inputs, strict=True):
                buf.copy_(t)
        self.graph.replay()
        return self.out
