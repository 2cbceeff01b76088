"""Per-example tile functions of the encoder kernels (:mod:`ranknas.supernet.encoder_kernels`).

Each works on one example's ``[NP, EP]`` tiles in registers (``NP`` tokens, ``EP`` features,
both padded to powers of two and at least 16, so that every product is a ``tl.dot``): the
weights as transposed tiles, sums added into memory, LayerNorm statistics and their
backward, the masks of padded tokens, the attention's backward over the heads (shared with
the tensor-core experiment of ``benchmarks/attention_tensor_core.py``) and the layer after
the attention, which the backward recomputes exactly as the forward computed it.
"""

from __future__ import annotations

try:  # only for the CUDA kernels; CPU-only installs have no Triton
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["add_mat", "add_vec", "after_attention", "heads_backward", "in_proj", "ln_backward",
           "ln_stats", "mm", "tile_offsets", "token_masks", "token_tiles", "vec", "wt",
           "zero_row"]

if triton is not None:
    @triton.jit
    def mm(a, b, PRECISION: tl.constexpr):
        return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def wt(w_ptr, E: tl.constexpr, EP: tl.constexpr):
        """``W^T [EP in, EP out]`` of a row-major ``W [E out, E in]``, zero padded: ``x @ W^T``
        is then one ``tl.dot``."""
        i = tl.arange(0, EP)
        o = tl.arange(0, EP)
        ok = (i < E)[:, None] & (o < E)[None, :]
        return tl.load(w_ptr + o[None, :] * E + i[:, None], mask=ok, other=0.0).to(tl.float32)

    @triton.jit
    def vec(ptr, E: tl.constexpr, EP: tl.constexpr):
        cols = tl.arange(0, EP)
        return tl.load(ptr + cols, mask=cols < E, other=0.0).to(tl.float32)

    @triton.jit
    def ln_stats(x, cm, E: tl.constexpr):
        """``(xhat, rstd)`` of LayerNorm rows; ``x``'s padded columns are 0 and ``cm`` (0/1
        per column) keeps them out of the variance."""
        mean = tl.sum(x, 1) / E
        d = (x - mean[:, None]) * cm[None, :]
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, 1) / E + 1e-5)
        return d * rstd[:, None], rstd

    @triton.jit
    def ln_backward(xhat, rstd, g, w, cm, E: tl.constexpr):
        """``d x`` of LayerNorm from ``g = d y``; padded columns come out 0."""
        dxhat = g * w[None, :]
        c1 = tl.sum(dxhat * xhat, 1) / E
        c2 = tl.sum(dxhat, 1) / E
        return (dxhat - c2[:, None] - xhat * c1[:, None]) * rstd[:, None] * cm[None, :]

    @triton.jit
    def add_mat(ptr, x, E: tl.constexpr, EP: tl.constexpr):
        """Adds an ``[EP out, EP in]`` tile into row-major ``[E, E]`` floats at ``ptr``."""
        o = tl.arange(0, EP)
        i = tl.arange(0, EP)
        offs = o[:, None] * E + i[None, :]
        ok = (o < E)[:, None] & (i < E)[None, :]
        tl.store(ptr + offs, tl.load(ptr + offs, mask=ok, other=0.0) + x, mask=ok)

    @triton.jit
    def add_vec(ptr, x, E: tl.constexpr, EP: tl.constexpr):
        """Adds an ``[EP]`` vector into ``E`` floats at ``ptr``."""
        c = tl.arange(0, EP)
        tl.store(ptr + c, tl.load(ptr + c, mask=c < E, other=0.0) + x, mask=c < E)

    @triton.jit
    def zero_row(ptr, n):
        """Zeroes ``n`` floats at ``ptr``."""
        o = 0
        while o < n:
            offs = o + tl.arange(0, 256)
            tl.store(ptr + offs, tl.zeros((256,), tl.float32), mask=offs < n)
            o += 256

    @triton.jit
    def in_proj(in_w, in_b, scale, E: tl.constexpr, EP: tl.constexpr):
        """``(wq, wk, wv, bq, bk, bv)``: the in-projection's transposed tiles and biases, the
        score scale folded into q's (once per program, not into every score tile)."""
        wq = wt(in_w, E, EP) * scale
        wk = wt(in_w + E * E, E, EP)
        wv = wt(in_w + 2 * E * E, E, EP)
        bq = vec(in_b, E, EP) * scale
        return wq, wk, wv, bq, vec(in_b + E, E, EP), vec(in_b + 2 * E, E, EP)

    @triton.jit
    def token_masks(kb_ptr, rm_ptr, rows, row_ok):
        """``(key bias, row mask)`` per token; padded tokens score -inf and are masked out."""
        kb = tl.load(kb_ptr + rows, mask=row_ok, other=float("-inf")).to(tl.float32)
        return kb, tl.load(rm_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)

    @triton.jit
    def tile_offsets(ex, rows, cols, s0, s1, s2):
        """Offsets of example ``ex``'s ``[NP, EP]`` tile in a ``[B, L, E]`` tensor of strides
        ``(s0, s1, s2)`` (a view: no copy into one layout first)."""
        return ex * s0 + rows[:, None] * s1 + cols[None, :] * s2

    @triton.jit
    def token_tiles(L: tl.constexpr, E: tl.constexpr, NP: tl.constexpr, EP: tl.constexpr):
        """``(rows, cols, row_ok, tile_ok, cm)`` of an ``[NP, EP]`` token tile: the live
        tokens and features, and ``cm`` the features as 0/1 floats."""
        rows = tl.arange(0, NP)
        cols = tl.arange(0, EP)
        row_ok = rows < L
        tile_ok = row_ok[:, None] & (cols < E)[None, :]
        return rows, cols, row_ok, tile_ok, (cols < E).to(tl.float32)

    @triton.jit
    def heads_backward(q, k, v, att, datt, key_bias, lse_ptr, rows, row_ok, cols,
                        L: tl.constexpr, H: tl.constexpr, D: tl.constexpr, NP: tl.constexpr,
                        EP: tl.constexpr, PRECISION: tl.constexpr, UNROLL: tl.constexpr):
        """``(dq, dk, dv)`` ``[NP, EP]`` of the H heads' softmax attention (D columns each)
        from the scaled ``q``, ``k``, ``v``, the output ``att`` and its gradient ``datt``;
        each head's probabilities are recomputed from its log-sum-exp at ``lse_ptr + h * L``.
        ``dq`` is the gradient of the scaled ``q``."""
        kt = tl.trans(k)
        vt = tl.trans(v)
        dq = tl.zeros((NP, EP), tl.float32)
        dk = tl.zeros((NP, EP), tl.float32)
        dv = tl.zeros((NP, EP), tl.float32)
        for h in tl.range(H, loop_unroll_factor=UNROLL):
            head = (cols // D) == h
            qh = tl.where(head[None, :], q, 0.0)
            doh = tl.where(head[None, :], datt, 0.0)
            # padded query rows read lse = +inf: p = exp(s - inf) = 0 even where s = -inf
            # (other=-inf would give -inf - -inf = NaN)
            lse = tl.load(lse_ptr + h * L + rows, mask=row_ok, other=float("inf"))
            p = tl.exp(mm(qh, kt, PRECISION) + key_bias[None, :] - lse[:, None])
            dv += mm(tl.trans(p), doh, PRECISION)
            # doh is head-masked, so dp and delta only see head h's columns
            delta = tl.sum(doh * att, 1)
            ds = p * (mm(doh, vt, PRECISION) - delta[:, None])
            dq += mm(ds, tl.where(head[None, :], k, 0.0), PRECISION)
            dk += mm(tl.trans(ds), qh, PRECISION)
        return dq, dk, dv

    @triton.jit
    def after_attention(z, att, wo, bo, g1, s1, w1, c1, w2, c2, cm, E: tl.constexpr,
                         PRECISION: tl.constexpr):
        """The layer from the attention's output on: ``(xhat1, rstd1, y1, pre, hidden, xhat2,
        rstd2)``; the output is ``xhat2 * g2 + s2``. One function, so that the backward
        recomputes exactly what the forward computed."""
        xhat1, rstd1 = ln_stats(z + mm(att, wo, PRECISION) + bo[None, :], cm, E)
        y1 = xhat1 * g1[None, :] + s1[None, :]
        pre = mm(y1, w1, PRECISION) + c1[None, :]
        hidden = tl.maximum(pre, 0.0)
        xhat2, rstd2 = ln_stats(y1 + mm(hidden, w2, PRECISION) + c2[None, :], cm, E)
        return xhat1, rstd1, y1, pre, hidden, xhat2, rstd2
