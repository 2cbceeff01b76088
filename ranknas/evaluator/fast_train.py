"""One training step of :func:`ranknas.evaluator.training.train`, plain or fast.

The plain step is eager PyTorch: ``torch.sparse`` embedding gradients and ``torch.optim``
optimizers. The opt-in fast paths (``TrainConfig`` fields, see ``training.py``) are:

- ``embedding_update="index"``: every sparse ``nn.Embedding`` lookup returns a detached leaf,
  so backward stops at the ``[.., E]`` rows looked up; :class:`IndexAdagrad` then sums duplicate
  rows with a sort, a cumsum and per-row sums (fixed shapes: no ``unique``/``coalesce``, no
  host sync; :mod:`~ranknas.evaluator.sparse_rows`' kernels on CUDA) and applies exactly the
  update of ``torch.optim.Adagrad`` (or SGD) on a sparse gradient. Dense parameters get the
  same math from :func:`~ranknas.evaluator.fused_adagrad.adagrad_` (one pass per tensor on
  CUDA).
- ``compile=True``: ``torch.compile`` of the model; the embedding lookup is kept out of the
  compiled region (a sparse gradient cannot be compiled), everything after it is one graph.
- ``precision``: ``tf32`` matmuls, or ``bf16`` autocast of the forward (loss in float32).
- ``fused_attention=True``: ``nn.MultiheadAttention`` self-attention with small heads runs as
  one Triton kernel per (example, head) forward and backward (:func:`tiny_head_attention`),
  instead of materialising the ``[heads, L, L]`` scores and probabilities several times.
- ``cuda_graph=True``: after a few eager warm-up steps, the whole step (forward, backward,
  optimizer) is captured once in a CUDA graph and replayed for every batch of the same size.

A batch of another size than the first (the trimmed last batch of an ``examples`` budget) runs
eagerly, uncompiled and outside the graph, so it never triggers a recompile or a capture.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ranknas.errors import ConfigError
from ranknas.evaluator.data.schema import Batch
from ranknas.evaluator.fused_adagrad import dense_update_
from ranknas.evaluator.sparse_rows import adagrad_rows_, gather_rows, segment_sums
from ranknas.evaluator.tiny_attention import fused_self_attention, tiny_head_attention

__all__ = ["IndexAdagrad", "TrainStep", "build_optimizers", "clip_grad_norm_", "dense_adagrad",
           "fused_self_attention", "precision_context", "split_parameters",
           "tiny_head_attention"]

PRECISIONS = ("fp32", "tf32", "bf16")
EMBEDDING_UPDATES = ("sparse", "index")
GRAPH_WARMUP_STEPS = 3  # eager steps (on a side stream) before the CUDA graph is captured


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into (dense, sparse): sparse = weights of sparse embeddings."""
    sparse_ids = {id(m.weight) for m in _sparse_embeddings(model)}
    dense, sparse, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (sparse if id(p) in sparse_ids else dense).append(p)
    return dense, sparse


def _sparse_embeddings(model: nn.Module) -> list[nn.Embedding | nn.EmbeddingBag]:
    return [m for m in model.modules()
            if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse]


def dense_adagrad(params: list[nn.Parameter], lr: float, eps: float,
                  weight_decay: float) -> torch.optim.Adagrad:
    """Adagrad over dense gradients; torch's fused kernel where every parameter is on the
    CPU (one pass per tensor instead of four: 4.5x the update with weight decay, and a
    quarter of a CPU supernet step, is spent there otherwise). CUDA has no fused Adagrad."""
    fused = bool(params) and all(p.device.type == "cpu" for p in params)
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay,
                               fused=fused or None)


def build_optimizers(model: nn.Module, cfg: Any) -> list[torch.optim.Optimizer]:
    """``torch.optim`` optimizers of the plain step: dense and sparse parameters apart."""
    dense, sparse = split_parameters(model)
    opts: list[torch.optim.Optimizer] = []
    slr = cfg.effective_sparse_lr
    if cfg.optimizer == "adagrad":
        if dense:
            opts.append(dense_adagrad(dense, cfg.lr, cfg.eps, cfg.weight_decay))
        if sparse:
            opts.append(torch.optim.Adagrad(sparse, lr=slr, eps=cfg.eps))
    elif cfg.optimizer == "adam":
        if dense:
            opts.append(torch.optim.Adam(dense, lr=cfg.lr, eps=cfg.eps,
                                         weight_decay=cfg.weight_decay))
        if sparse:
            opts.append(torch.optim.SparseAdam(sparse, lr=slr, eps=cfg.eps))
    else:
        if dense:
            opts.append(torch.optim.SGD(dense, lr=cfg.lr, weight_decay=cfg.weight_decay))
        if sparse:
            opts.append(torch.optim.SGD(sparse, lr=slr))
    if not opts:
        raise ConfigError("model", "has no trainable parameters")
    return opts


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float,
                    extra: list[torch.Tensor] = ()) -> torch.Tensor:
    """Clip the global grad norm in place, sparse grads included; return the norm (0-dim).

    ``torch.nn.utils.clip_grad_norm_`` cannot take sparse gradients, hence this version. Sparse
    grads are coalesced first (duplicate rows would otherwise be counted apart); the optimizers
    coalesce anyway, so this costs nothing extra. ``extra``: further gradient tensors (the
    coalesced rows of the index path), scaled in place too. No host sync.
    """
    norms = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            norms.append(torch.linalg.vector_norm(p.grad._values()))
        else:
            norms.append(torch.linalg.vector_norm(p.grad))
    norms.extend(torch.linalg.vector_norm(g) for g in extra)
    if not norms:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in [p.grad for p in params if p.grad is not None] + list(extra):
        g.mul_(coef)
    return total


@contextmanager
def precision_context(precision: str) -> Iterator[None]:
    """``tf32``: float32 matmuls on TF32 tensor cores while inside; restored after."""
    if precision != "tf32":
        yield
        return
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


class IndexAdagrad:
    """Adagrad (or SGD) on the rows of one embedding table looked up in a step.

    Same math as ``torch.optim.Adagrad`` on a sparse gradient (``lr_decay=0``): duplicate rows
    are summed first, then ``state += g*g`` and ``w -= lr * g / (sqrt(state) + eps)``. Built
    from fixed-shape ops (sort, cumsum, per-row sums), so it never syncs with the host and can
    be captured in a CUDA graph; on CUDA the row sums and the update are
    :mod:`~ranknas.evaluator.sparse_rows`' kernels. The row list is padded to the number of
    lookups with zero gradients, which leave the rows they point at unchanged.
    """

    def __init__(self, weight: nn.Parameter, lr: float, eps: float, adagrad: bool = True) -> None:
        self.weight, self.lr, self.eps = weight, lr, eps
        self.state = torch.zeros_like(weight, memory_format=torch.contiguous_format) \
            if adagrad else None

    def coalesce(self, ids: torch.Tensor,
                 grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows [N], grad sums [N, E])`` of ``N`` lookups ``ids`` with row grads ``grad``.

        Entry ``j`` holds the ``j``-th distinct row and the sum of its duplicates' gradients;
        entries past the number of distinct rows hold a zero gradient.
        """
        flat = ids.reshape(-1)
        grad = grad.reshape(flat.numel(), -1)
        small = self.weight.shape[0] <= torch.iinfo(torch.int32).max
        sorted_keys, order = torch.sort(flat.int() if small else flat)  # int32 sorts faster
        is_new = torch.ones_like(sorted_keys, dtype=torch.bool)
        is_new[1:] = sorted_keys[1:] != sorted_keys[:-1]
        segment = torch.cumsum(is_new, 0) - 1
        sums = segment_sums(grad, order, segment)
        # Padding entries (past the distinct rows) point at row ``i % rows``, not all at one
        # row, so their zero updates do not serialise on one address.
        rows = torch.arange(flat.numel(), device=flat.device) % self.weight.shape[0]
        rows.scatter_(0, segment, flat.index_select(0, order))
        return rows, sums

    def step(self, rows: torch.Tensor, sums: torch.Tensor) -> None:
        adagrad_rows_(self.weight, self.state, rows, sums, self.lr, self.eps)


def _grad(rows: torch.Tensor) -> torch.Tensor:
    """The gradient of looked-up rows; zeros when the loss did not use them (a supernet path
    that never reads the sparse input)."""
    return rows.grad if rows.grad is not None else torch.zeros_like(rows)


class _ForeachDense:
    """``torch.optim.Adagrad`` / ``SGD`` math (no lr decay, no momentum) on dense parameters,
    in kernels with no host-side state
    (:func:`~ranknas.evaluator.fused_adagrad.dense_update_`): capturable in a CUDA graph."""

    def __init__(self, params: list[nn.Parameter], cfg: Any) -> None:
        self.params, self.lr, self.eps, self.wd = params, cfg.lr, cfg.eps, cfg.weight_decay
        self.sums = ([torch.zeros_like(p) for p in params] if cfg.optimizer == "adagrad"
                     else None)

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        dense_update_(params, [p.grad for p in params],
                      None if self.sums is None else [self.sums[i] for i in live],
                      self.lr, self.eps, self.wd)


class TrainStep:
    """``step(batch) -> (loss, grad norm or None)``: one optimizer step, both 0-dim on device.

    Call :meth:`close` when done: it restores the patched modules' ``forward``.
    """

    def __init__(self, model: nn.Module, cfg: Any, device: torch.device) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.index = cfg.embedding_update == "index"
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if cfg.precision == "bf16" else nullcontext())
        dense, sparse = split_parameters(model)
        self.params = dense + sparse
        self._patched: list[nn.Module] = []
        self._lookups: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        if self.index:
            if cfg.optimizer not in ("adagrad", "sgd"):
                raise ConfigError("embedding_update", "'index' supports optimizer adagrad or "
                                  f"sgd, got {cfg.optimizer!r}")
            self.dense_opt = _ForeachDense(dense, cfg)
            self.tables: dict[nn.Module, IndexAdagrad] = {}
            for m in _sparse_embeddings(model):
                self._check_indexable(m)
                self.tables[m] = IndexAdagrad(m.weight, cfg.effective_sparse_lr, cfg.eps,
                                              adagrad=cfg.optimizer == "adagrad")
                self._patch(m, self._leaf_lookup(m))
            if not dense and not self.tables:
                raise ConfigError("model", "has no trainable parameters")
        else:
            self.optimizers = build_optimizers(model, cfg)
            if cfg.compile:  # a sparse gradient cannot go through the compiled graph
                for m in _sparse_embeddings(model):
                    self._patch(m, m.forward)
        if cfg.fused_attention:
            for m in model.modules():
                if isinstance(m, nn.MultiheadAttention):
                    self._patch(m, fused_self_attention(m), compile_ok=True)
        self.compiled = torch.compile(model, dynamic=False) if cfg.compile else model
        self.size: int | None = None  # the batch size compiled / captured for
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    # -- embedding lookups ---------------------------------------------------------------
    @staticmethod
    def _check_indexable(m: nn.Module) -> None:
        if not isinstance(m, nn.Embedding) or m.padding_idx is not None \
                or m.max_norm is not None or m.scale_grad_by_freq:
            raise ConfigError("embedding_update", "'index' supports plain sparse nn.Embedding "
                              f"tables (no padding_idx/max_norm/scale_grad_by_freq), got {m}")

    def _patch(self, module: nn.Module, fn: Any, compile_ok: bool = False) -> None:
        module.forward = fn if compile_ok else torch.compiler.disable(fn)
        self._patched.append(module)

    def _leaf_lookup(self, module: nn.Embedding) -> Any:
        def lookup(ids: torch.Tensor) -> torch.Tensor:
            rows = gather_rows(module.weight.detach(), ids).requires_grad_()
            self._lookups.setdefault(module, []).append((ids, rows))
            return rows
        return lookup

    @torch.no_grad()
    def load_adagrad_sums(self, sums: Mapping[str, torch.Tensor]) -> None:
        """Start Adagrad's accumulators from ``sums`` (parameter name -> tensor).

        Raises:
            ConfigError: the optimizer is not Adagrad, or a name is not a parameter.
        """
        if self.cfg.optimizer != "adagrad":
            raise ConfigError("adagrad_sums", f"needs optimizer adagrad, not "
                              f"{self.cfg.optimizer!r}")
        named = dict(self.model.named_parameters())
        unknown = sorted(set(sums) - set(named))
        if unknown:
            raise ConfigError("adagrad_sums", f"{unknown[0]!r} is not a parameter of the model")
        by_param = {named[k]: v for k, v in sums.items()}
        if self.index:
            accumulators = dict(zip(self.dense_opt.params, self.dense_opt.sums or [],
                                    strict=True))
            accumulators.update({m.weight: t.state for m, t in self.tables.items()})
        else:
            accumulators = {p: opt.state[p]["sum"] for opt in self.optimizers
                            for group in opt.param_groups for p in group["params"]}
        for param, value in by_param.items():
            if param in accumulators:  # frozen parameters have no optimizer state
                accumulators[param].copy_(value)

    def close(self) -> None:
        for m in self._patched:
            del m.forward
        self._patched.clear()

    # -- the step ------------------------------------------------------------------------
    def _step(self, batch: Batch, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._lookups.clear()
        with self.autocast:
            logits = model(batch.dense, batch.sparse)
        if logits.shape != batch.labels.shape:
            raise ConfigError("model", f"must return logits of shape [B]={[len(batch)]}, "
                              f"got {list(logits.shape)}")
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels.float())
        if not self.index:
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)  # sparse grads must not accumulate
            loss.backward()
            norm = (clip_grad_norm_(self.params, self.cfg.grad_clip)
                    if self.cfg.grad_clip is not None else None)
            for opt in self.optimizers:
                opt.step()
            return loss.detach(), norm
        for p in self.dense_opt.params:
            p.grad = None
        loss.backward()
        rows = {m: self.tables[m].coalesce(torch.cat([i.reshape(-1) for i, _ in looks]),
                                         torch.cat([_grad(r).reshape(-1, r.shape[-1])
                                                    for _, r in looks]))
                for m, looks in self._lookups.items()}
        self._lookups.clear()
        norm = None
        if self.cfg.grad_clip is not None:
            norm = clip_grad_norm_(self.dense_opt.params, self.cfg.grad_clip,
                                   [s for _, s in rows.values()])
        self.dense_opt.step()
        for m, (r, s) in rows.items():
            self.tables[m].step(r, s)
        return loss.detach(), norm

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.size is None:
            self.size = len(batch)
        if len(batch) != self.size:  # e.g. the trimmed last batch: eager, uncompiled
            return self._step(batch, self.model)
        if not self.cfg.cuda_graph:
            return self._step(batch, self.compiled)
        return self._graph_step(batch)

    def _graph_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls += 1
        if self.graph is None and self.calls <= GRAPH_WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self._step(batch, self.compiled)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        if self.graph is None:
            self.static = Batch(batch.dense.clone(), batch.sparse.clone(),
                                batch.labels.clone())
            for p in self.params:
                p.grad = None
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._step(self.static, self.compiled)
        else:
            self.static.dense.copy_(batch.dense)
            self.static.sparse.copy_(batch.sparse)
            self.static.labels.copy_(batch.labels)
        self.graph.replay()
        return self.out
