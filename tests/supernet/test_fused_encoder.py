"""The fused encoder layer (one op for NASRec's transformer layer) == PyTorch's modules, and
the masked / segmented executions that take it == the sliced supernet."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import load_space
from ranknas.supernet import Supernet, fused_encoder
from ranknas.supernet.fused_encoder import (
    ENCODER_WEIGHTS,
    fused_encoder_fits,
    split_grads,
    tiny_encoder_layer,
)
from ranknas.supernet.masked import encode, masked_forward
from ranknas.supernet.segmented import segmented_forward

SCHEMA = DataSchema(4, (30, 20, 10, 50, 7), "tiny")
B, L, E, HEADS = 3, 7, 16, 8


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


class _Layer(nn.Module):
    """NASRec's encoder layer as ElasticTransformer runs it, after its field projection."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.attn_norm, self.ffn_norm = nn.LayerNorm(E), nn.LayerNorm(E)
        self.fc1, self.fc2 = nn.Linear(E, E), nn.Linear(E, E)

    def forward(self, z: torch.Tensor, key_bias: torch.Tensor,
                row_mask: torch.Tensor) -> torch.Tensor:
        mask = key_bias.expand(z.shape[1], -1).to(z.dtype)
        z = self.attn_norm(z + self.attn(z, z, z, attn_mask=mask, need_weights=False)[0])
        z = self.ffn_norm(z + self.fc2(torch.relu(self.fc1(z))))
        return z * row_mask[:, None]


def _masks(padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    key_bias = torch.zeros(L)
    key_bias[L - padded:] = float("-inf")
    return key_bias, (key_bias == 0).double()


@pytest.mark.parametrize("padded", [0, 2])
def test_op_equals_the_modules(padded):
    """Output and every gradient (input, 12 weights) of the op equal PyTorch's modules'."""
    torch.manual_seed(0)
    layer = _Layer().double()
    with torch.no_grad():  # away from the init, so every term matters
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = torch.randn(B, L, E, dtype=torch.float64, requires_grad=True)
    key_bias, row_mask = _masks(padded)
    weights = [layer.get_parameter(name) for name in ENCODER_WEIGHTS]
    got = tiny_encoder_layer(z, key_bias, row_mask, weights, HEADS)[0]
    want = layer(z, key_bias, row_mask)
    assert _close(got, want, 1e-12)
    grad = torch.randn_like(want)
    got_grads = torch.autograd.grad(got, [z, *weights], grad)
    want_grads = torch.autograd.grad(want, [z, *weights], grad)
    for name, g, w in zip(("z", *ENCODER_WEIGHTS), got_grads, want_grads, strict=True):
        assert _close(g, w, 1e-10), name
    if padded:
        assert not got[:, L - padded:].any()


def test_op_passes_gradcheck():
    torch.manual_seed(1)
    z = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    weights = [(0.3 * torch.randn(*shape, dtype=torch.float64)).requires_grad_()
               for shape in ((24, 8), (24,), (8, 8), (8,), (8,), (8,), (8, 8), (8,), (8, 8),
                             (8,), (8,), (8,))]
    key_bias = torch.tensor([0.0, 0.0, 0.0, float("-inf")])
    row_mask = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda z, *ws: tiny_encoder_layer(z, key_bias, row_mask, list(ws), 4)[0],
        (z, *weights))


def test_taken_by_default_only_on_cuda_with_tf32(monkeypatch):
    z = torch.zeros(2, 4, 16)
    assert fused_encoder.ENABLED is None and not fused_encoder_fits(z, 8)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert not fused_encoder_fits(z, 8)  # a CPU tensor
    if torch.cuda.is_available():
        assert fused_encoder_fits(z.cuda(), 8)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        assert not fused_encoder_fits(z.cuda(), 8)
    monkeypatch.setattr(fused_encoder, "ENABLED", False)
    assert not fused_encoder_fits(z, 8)
    monkeypatch.setattr(fused_encoder, "ENABLED", True)
    assert fused_encoder_fits(z, 8) and fused_encoder_fits(z.double(), 8)
    assert not fused_encoder_fits(z.half(), 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_encoder_fits(z, 8)


def _grads(supernet: Supernet, fn, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    for p in supernet.parameters():
        p.grad = None
    nn.functional.binary_cross_entropy_with_logits(fn(), labels).backward()
    return {k: p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
            for k, p in supernet.named_parameters() if p.grad is not None}


def test_masked_and_segmented_executions_take_it(monkeypatch):
    """With the op enabled, the masked and segmented executions still equal the sliced
    supernet, forward and gradients, on paths that run transformers."""
    monkeypatch.setattr(fused_encoder, "ENABLED", True)
    calls = []
    original = fused_encoder_fits
    monkeypatch.setattr("ranknas.supernet.masked_ops.fused_encoder_fits",
                        lambda z, heads: calls.append(z.shape) or original(z, heads))
    supernet = Supernet(load_space("nasrec_full"), SCHEMA, seed=0).train()
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(8, SCHEMA.num_dense, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (8,), generator=gen)
                          for c in SCHEMA.cardinalities], dim=1)
    labels = torch.randint(0, 2, (8,), generator=gen).float()
    rng = random.Random(3)
    archs = [a for a in (supernet.space.sample(rng) for _ in range(40))
             if any(n.op == "transformer"
                    for n in supernet.space.materialize(a, SCHEMA).nodes)][:4]
    assert archs
    for arch in archs:
        want = _grads(supernet, lambda a=arch: supernet(dense, sparse, a), labels)
        path = encode(supernet, arch)
        for run in (lambda a=arch: segmented_forward(supernet, dense, sparse, a),
                    lambda p=path: masked_forward(supernet, dense, sparse, p)):
            got = _grads(supernet, run, labels)
            for key, g in want.items():
                assert _close(got[key], g, 1e-4), f"{arch.arch_id}: {key}"
    assert calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernels need CUDA")
@pytest.mark.parametrize(("tokens", "views"), [(5, False), (16, False), (33, False),
                                               (64, False), (33, True)])
def test_cuda_kernels_equal_the_reference(tokens, views):
    """The Triton kernels (3xTF32 dots: TF32 is off by default) against the float64 reference,
    forward and backward, with padded tokens; ``views``: z in a transposed layout and the
    gradient a range of a wider buffer, read in place."""
    from ranknas.supernet.fused_encoder import encoder_reference, encoder_reference_backward

    torch.manual_seed(2)
    z = torch.randn(64, tokens, E, device="cuda")
    if views:
        z = z.transpose(1, 2).contiguous().transpose(1, 2)
    layer = _Layer().cuda()
    weights = [(p + 0.3 * torch.randn_like(p)).detach()
               for p in map(layer.get_parameter, ENCODER_WEIGHTS)]
    key_bias = torch.zeros(tokens, device="cuda")
    key_bias[-2:] = float("-inf")
    row_mask = (key_bias == 0).float()
    grad = torch.randn(64, tokens + 3, E, device="cuda").narrow(1, 1, tokens)
    out, att, lse = tiny_encoder_layer(z, key_bias, row_mask, weights, HEADS)
    got_dz, flat = torch.ops.ranknas.tiny_encoder_layer_backward(grad, z, key_bias, row_mask,
                                                                 weights, HEADS, att, lse)
    got = [got_dz, *split_grads(flat, weights)]
    dbl = [w.double() for w in weights]
    want_out, want_att, want_lse = encoder_reference(z.double(), key_bias, row_mask.double(),
                                                     dbl, HEADS)
    assert _close(out, want_out.float(), 1e-4) and _close(att, want_att.float(), 1e-4)
    assert _close(lse, want_lse.float(), 1e-4)
    dz, grads = encoder_reference_backward(grad.double(), z.double(), key_bias,
                                           row_mask.double(), dbl, HEADS, want_att, want_lse)
    for name, g, w in zip(("z", *ENCODER_WEIGHTS), got, [dz, *grads], strict=True):
        assert g.shape == w.shape and _close(g, w.float(), 1e-4), name
