"""One training step of :func:`ranknas.evaluator.training.train`, plain or fast.

The plain step is eager PyTorch: ``torch.sparse`` embedding gradients and ``torch.optim``
optimizers. The opt-in fast paths (``TrainConfig`` fields, see ``training.py``) are:

- ``embedding_update="index"``: every sparse ``nn.Embedding`` lookup returns a detached leaf,
  so backward stops at the ``[.., E]`` rows looked up; :class:`IndexAdagrad` then sums duplicate
  rows with a sort, a cumsum and ``index_add_`` (fixed shapes: no ``unique``/``coalesce``, no
  host sync) and applies exactly the update of ``torch.optim.Adagrad`` (or SGD) on a sparse
  gradient. Dense parameters get the same math through ``torch._foreach_*`` kernels.
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

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ranknas.errors import ConfigError

try:  # only for the fused attention kernel on CUDA; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None
from ranknas.evaluator.data.schema import Batch

__all__ = ["IndexAdagrad", "TrainStep", "build_optimizers", "clip_grad_norm_",
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


def build_optimizers(model: nn.Module, cfg: Any) -> list[torch.optim.Optimizer]:
    """``torch.optim`` optimizers of the plain step: dense and sparse parameters apart."""
    dense, sparse = split_parameters(model)
    opts: list[torch.optim.Optimizer] = []
    slr = cfg.effective_sparse_lr
    if cfg.optimizer == "adagrad":
        if dense:
            opts.append(torch.optim.Adagrad(dense, lr=cfg.lr, eps=cfg.eps,
                                            weight_decay=cfg.weight_decay))
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
    from fixed-shape ops (sort, cumsum, ``index_add_``), so it never syncs with the host and can
    be captured in a CUDA graph. The row list is padded to the number of lookups with zero
    gradients, which leave the rows they point at unchanged.
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
        sums = torch.zeros_like(grad).index_add_(0, segment, grad.index_select(0, order))
        # Padding entries (past the distinct rows) point at row ``i % rows``, not all at one
        # row, so their zero updates do not serialise on one address.
        rows = torch.arange(flat.numel(), device=flat.device) % self.weight.shape[0]
        rows.scatter_(0, segment, flat.index_select(0, order))
        return rows, sums

    @torch.no_grad()
    def step(self, rows: torch.Tensor, sums: torch.Tensor) -> None:
        if self.state is None:  # SGD
            self.weight.index_add_(0, rows, sums, alpha=-self.lr)
            return
        self.state.index_add_(0, rows, sums * sums)
        std = self.state.index_select(0, rows).sqrt_().add_(self.eps)
        self.weight.index_add_(0, rows, sums / std, alpha=-self.lr)


class _ForeachDense:
    """``torch.optim.Adagrad`` / ``SGD`` math (no lr decay, no momentum) on dense parameters,
    as ``torch._foreach_*`` kernels with no host-side state: capturable in a CUDA graph."""

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
        grads = [p.grad for p in params]
        if self.wd:
            grads = torch._foreach_add(grads, params, alpha=self.wd)
        if self.sums is None:
            torch._foreach_add_(params, grads, alpha=-self.lr)
            return
        sums = [self.sums[i] for i in live]
        torch._foreach_addcmul_(sums, grads, grads)
        std = torch._foreach_sqrt(sums)
        torch._foreach_add_(std, self.eps)
        torch._foreach_addcdiv_(params, grads, std, value=-self.lr)


# -- fused self-attention for tiny heads ----------------------------------------------------
#: Calls the fused kernel takes (others fall back to nn.MultiheadAttention): tokens, head dim.
FUSED_MAX_TOKENS, FUSED_MAX_HEAD_DIM = 128, 4


def _split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """Packed ``[B, L, 3E]`` (q | k | v, heads contiguous in each) -> three ``[B, h, L, d]``,
    in float32 at least (float64 stays)."""
    b, n, e3 = qkv.shape
    qkv = qkv.to(torch.promote_types(qkv.dtype, torch.float32))
    return qkv.view(b, n, 3, heads, e3 // 3 // heads).permute(2, 0, 3, 1, 4).unbind(0)


@torch.library.custom_op("ranknas::tiny_head_attention", mutates_args=())
def tiny_head_attention(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax self-attention of packed ``qkv [B, L, 3E]``: ``(out [B, L, E], lse [B*h, L])``.

    Same math as ``nn.MultiheadAttention`` between its in- and out-projections (scale
    ``1/sqrt(d)``, no mask, no dropout). On CUDA a Triton kernel that never writes the
    ``[L, L]`` scores runs (head dim <= 4); elsewhere (and for float64) this PyTorch reference.
    """
    return _attention_reference(qkv, heads)


def _attention_reference(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _split_qkv(qkv, heads)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(s, dim=-1)
    out = torch.exp(s - lse[..., None]) @ v
    b, n = qkv.shape[:2]
    return (out.transpose(1, 2).reshape(b, n, -1).to(qkv.dtype),
            lse.reshape(b * heads, n).contiguous())


@torch.library.custom_op("ranknas::tiny_head_attention_backward", mutates_args=())
def tiny_head_attention_backward(qkv: torch.Tensor, out: torch.Tensor, grad: torch.Tensor,
                                 lse: torch.Tensor, heads: int) -> torch.Tensor:
    """``d loss / d qkv`` of :func:`tiny_head_attention`, from ``grad = d loss / d out``."""
    return _attention_reference_backward(qkv, out, grad, lse, heads)


def _attention_reference_backward(qkv: torch.Tensor, out: torch.Tensor, grad: torch.Tensor,
                                  lse: torch.Tensor, heads: int) -> torch.Tensor:
    q, k, v = _split_qkv(qkv, heads)
    b, n = qkv.shape[:2]
    scale = 1 / math.sqrt(q.shape[-1])
    p = torch.exp(q @ k.transpose(-1, -2) * scale - lse.view(b, heads, n, 1).to(q.dtype))
    do = grad.to(q.dtype).view(b, n, heads, -1).transpose(1, 2)
    o = out.to(q.dtype).view(b, n, heads, -1).transpose(1, 2)
    dv = p.transpose(-1, -2) @ do
    ds = p * (do @ v.transpose(-1, -2) - (do * o).sum(-1, keepdim=True)) * scale
    dq, dk = ds @ k, ds.transpose(-1, -2) @ q
    return torch.stack([dq, dk, dv], 2).permute(0, 3, 2, 1, 4).reshape(qkv.shape).to(qkv.dtype)


@tiny_head_attention.register_fake
def _(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, e3 = qkv.shape
    return qkv.new_empty(b, n, e3 // 3), qkv.new_empty(b * heads, n, dtype=_lse_dtype(qkv))


def _lse_dtype(qkv: torch.Tensor) -> torch.dtype:
    return torch.promote_types(qkv.dtype, torch.float32)


@tiny_head_attention_backward.register_fake
def _(qkv: torch.Tensor, out: torch.Tensor, grad: torch.Tensor, lse: torch.Tensor,
      heads: int) -> torch.Tensor:
    return torch.empty_like(qkv)


def _attention_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    ctx.save_for_backward(inputs[0], output[0], output[1])
    ctx.heads = inputs[1]


def _attention_grad(ctx: Any, grad_out: torch.Tensor, grad_lse: torch.Tensor) -> tuple:
    qkv, out, lse = ctx.saved_tensors
    return tiny_head_attention_backward(qkv, out, grad_out.contiguous(), lse, ctx.heads), None


tiny_head_attention.register_autograd(_attention_grad, setup_context=_attention_setup)


# The Triton kernels of tiny_head_attention. One program per (example, head), one thread per
# token: the thread of query i loops over the keys (unrolled: N is a compile-time constant)
# with broadcast loads of each key and value, so the [N, N] scores live one row per thread and
# nothing needs a cross-thread reduction. Backward: the thread of token t computes dq_t looping
# over keys, then dk_t and dv_t looping over queries (scores recomputed from lse). Head dims up
# to 4; components past D are compiled out.
if triton is not None:
    @triton.jit
    def _load4(ptr, D: tl.constexpr):
        x0 = tl.load(ptr).to(tl.float32)
        x1, x2, x3 = x0, x0, x0  # placeholders, never read when D is smaller
        if D > 1:
            x1 = tl.load(ptr + 1).to(tl.float32)
        if D > 2:
            x2 = tl.load(ptr + 2).to(tl.float32)
        if D > 3:
            x3 = tl.load(ptr + 3).to(tl.float32)
        return x0, x1, x2, x3

    @triton.jit
    def _dot4(a0, a1, a2, a3, b0, b1, b2, b3, D: tl.constexpr):
        r = a0 * b0
        if D > 1:
            r += a1 * b1
        if D > 2:
            r += a2 * b2
        if D > 3:
            r += a3 * b3
        return r

    @triton.jit
    def _store4(ptr, x0, x1, x2, x3, mask, D: tl.constexpr):  # store casts to ptr's type
        tl.store(ptr, x0, mask=mask)
        if D > 1:
            tl.store(ptr + 1, x1, mask=mask)
        if D > 2:
            tl.store(ptr + 2, x2, mask=mask)
        if D > 3:
            tl.store(ptr + 3, x3, mask=mask)

    @triton.jit
    def _attention_fwd(qkv_ptr, o_ptr, lse_ptr, scale, N: tl.constexpr, H: tl.constexpr,
            D: tl.constexpr, ROWS: tl.constexpr):
        pid = tl.program_id(0)
        e = H * D
        t = tl.arange(0, ROWS)
        ok = t < N
        t = tl.where(ok, t, 0)  # padding threads redo row 0 and store nothing
        base = qkv_ptr + (pid // H) * N * 3 * e + (pid % H) * D
        q0, q1, q2, q3 = _load4(base + t * 3 * e, D)
        q0, q1, q2, q3 = q0 * scale, q1 * scale, q2 * scale, q3 * scale
        m = tl.full((ROWS,), float("-inf"), tl.float32)
        for j in tl.static_range(N):
            k0, k1, k2, k3 = _load4(base + j * 3 * e + e, D)
            m = tl.maximum(m, _dot4(q0, q1, q2, q3, k0, k1, k2, k3, D))
        total = tl.zeros((ROWS,), tl.float32)
        a0, a1, a2, a3 = total, total, total, total
        for j in tl.static_range(N):
            k0, k1, k2, k3 = _load4(base + j * 3 * e + e, D)
            v0, v1, v2, v3 = _load4(base + j * 3 * e + 2 * e, D)
            p = tl.exp(_dot4(q0, q1, q2, q3, k0, k1, k2, k3, D) - m)
            total += p
            a0, a1, a2, a3 = a0 + p * v0, a1 + p * v1, a2 + p * v2, a3 + p * v3
        inv = 1.0 / total
        out = o_ptr + (pid // H) * N * e + (pid % H) * D + t * e
        _store4(out, a0 * inv, a1 * inv, a2 * inv, a3 * inv, ok, D)
        tl.store(lse_ptr + pid * N + t, m + tl.log(total), mask=ok)

    @triton.jit
    def _attention_bwd(qkv_ptr, o_ptr, do_ptr, lse_ptr, dqkv_ptr, scale, N: tl.constexpr,
            H: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr):
        pid = tl.program_id(0)
        e = H * D
        t = tl.arange(0, ROWS)
        ok = t < N
        t = tl.where(ok, t, 0)
        base = qkv_ptr + (pid // H) * N * 3 * e + (pid % H) * D
        obase = (pid // H) * N * e + (pid % H) * D
        lbase = lse_ptr + pid * N
        # token t as a query: dq_t = scale * sum_j ds_tj k_j
        q0, q1, q2, q3 = _load4(base + t * 3 * e, D)
        q0, q1, q2, q3 = q0 * scale, q1 * scale, q2 * scale, q3 * scale
        g0, g1, g2, g3 = _load4(do_ptr + obase + t * e, D)
        o0, o1, o2, o3 = _load4(o_ptr + obase + t * e, D)
        delta = _dot4(g0, g1, g2, g3, o0, o1, o2, o3, D)
        lse = tl.load(lbase + t)
        dq0 = tl.zeros((ROWS,), tl.float32)
        dq1, dq2, dq3 = dq0, dq0, dq0
        for j in tl.static_range(N):
            k0, k1, k2, k3 = _load4(base + j * 3 * e + e, D)
            v0, v1, v2, v3 = _load4(base + j * 3 * e + 2 * e, D)
            p = tl.exp(_dot4(q0, q1, q2, q3, k0, k1, k2, k3, D) - lse)
            ds = p * (_dot4(g0, g1, g2, g3, v0, v1, v2, v3, D) - delta)
            dq0, dq1, dq2, dq3 = dq0 + ds * k0, dq1 + ds * k1, dq2 + ds * k2, dq3 + ds * k3
        dbase = dqkv_ptr + (pid // H) * N * 3 * e + (pid % H) * D + t * 3 * e
        _store4(dbase, dq0 * scale, dq1 * scale, dq2 * scale, dq3 * scale, ok, D)
        # token t as a key: dv_t = sum_i p_it do_i, dk_t = scale * sum_i ds_it q_i
        k0, k1, k2, k3 = _load4(base + t * 3 * e + e, D)
        v0, v1, v2, v3 = _load4(base + t * 3 * e + 2 * e, D)
        dk0, dk1, dk2, dk3 = dq0 * 0.0, dq0 * 0.0, dq0 * 0.0, dq0 * 0.0
        dv0, dv1, dv2, dv3 = dk0, dk0, dk0, dk0
        for i in tl.static_range(N):
            q0, q1, q2, q3 = _load4(base + i * 3 * e, D)
            g0, g1, g2, g3 = _load4(do_ptr + obase + i * e, D)
            o0, o1, o2, o3 = _load4(o_ptr + obase + i * e, D)
            p = tl.exp(_dot4(q0, q1, q2, q3, k0, k1, k2, k3, D) * scale - tl.load(lbase + i))
            ds = p * (_dot4(g0, g1, g2, g3, v0, v1, v2, v3, D)
                      - _dot4(g0, g1, g2, g3, o0, o1, o2, o3, D))
            dv0, dv1, dv2, dv3 = dv0 + p * g0, dv1 + p * g1, dv2 + p * g2, dv3 + p * g3
            dk0, dk1, dk2, dk3 = dk0 + ds * q0, dk1 + ds * q1, dk2 + ds * q2, dk3 + ds * q3
        _store4(dbase + e, dk0 * scale, dk1 * scale, dk2 * scale, dk3 * scale, ok, D)
        _store4(dbase + 2 * e, dv0, dv1, dv2, dv3, ok, D)


def _kernel_fits(qkv: torch.Tensor, heads: int) -> bool:
    return (triton is not None and qkv.dtype != torch.float64
            and qkv.shape[1] <= FUSED_MAX_TOKENS
            and qkv.shape[2] // 3 // heads <= FUSED_MAX_HEAD_DIM)


def _launch(qkv: torch.Tensor, heads: int) -> tuple[tuple, dict]:
    b, n, e3 = qkv.shape
    d = e3 // 3 // heads
    rows = max(32, triton.next_power_of_2(n))
    meta = {"N": n, "H": heads, "D": d, "ROWS": rows, "num_warps": rows // 32}
    return (b * heads,), {"scale": 1 / math.sqrt(d), **meta}


@tiny_head_attention.register_kernel("cuda")
def _(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not _kernel_fits(qkv, heads):
        return _attention_reference(qkv, heads)
    qkv = qkv.contiguous()
    b, n, e3 = qkv.shape
    out = qkv.new_empty(b, n, e3 // 3)
    lse = qkv.new_empty(b * heads, n, dtype=torch.float32)
    grid, meta = _launch(qkv, heads)
    _attention_fwd[grid](qkv, out, lse, **meta)
    return out, lse


@tiny_head_attention_backward.register_kernel("cuda")
def _(qkv: torch.Tensor, out: torch.Tensor, grad: torch.Tensor, lse: torch.Tensor,
      heads: int) -> torch.Tensor:
    if not _kernel_fits(qkv, heads):
        return _attention_reference_backward(qkv, out, grad, lse, heads)
    qkv = qkv.contiguous()
    dqkv = torch.empty_like(qkv)
    grid, meta = _launch(qkv, heads)
    _attention_bwd[grid](qkv, out.contiguous(), grad.contiguous(), lse, dqkv, **meta)
    return dqkv


def fused_self_attention(module: nn.MultiheadAttention) -> Any:
    """A ``forward`` for ``module`` that runs :func:`tiny_head_attention` on the calls it can
    take (self-attention, batch first, no mask, no weights, no dropout, small heads) and the
    module's own forward on the others."""
    original = module.forward

    def forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        plain = (query is not key or key is not value or query.dim() != 3 or need_weights
                 or key_padding_mask is not None or attn_mask is not None or is_causal
                 or not module.batch_first or not module._qkv_same_embed_dim
                 or module.in_proj_bias is None or module.bias_k is not None
                 or (module.dropout > 0 and module.training)
                 or query.shape[1] > FUSED_MAX_TOKENS or module.head_dim > FUSED_MAX_HEAD_DIM)
        if plain:
            return original(query, key, value, key_padding_mask=key_padding_mask,
                            need_weights=need_weights, attn_mask=attn_mask,
                            average_attn_weights=average_attn_weights, is_causal=is_causal)
        qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias)
        out, _ = tiny_head_attention(qkv, module.num_heads)
        return F.linear(out, module.out_proj.weight, module.out_proj.bias), None

    return forward


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
            rows = F.embedding(ids, module.weight.detach()).requires_grad_()
            self._lookups.setdefault(module, []).append((ids, rows))
            return rows
        return lookup

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
                                         torch.cat([r.grad.reshape(-1, r.shape[-1])
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
