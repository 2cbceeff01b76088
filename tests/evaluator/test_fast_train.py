"""The opt-in fast training paths compute what the plain path computes (CPU checks; the
Triton attention kernel on a GPU where there is one)."""

import json
import math
from pathlib import Path

import pytest
import torch

from ranknas.errors import ConfigError
from ranknas.evaluator import fast_train
from ranknas.evaluator.data import make_synthetic
from ranknas.evaluator.tiny_attention import tiny_head_attention
from ranknas.evaluator.training import TrainConfig, train
from ranknas.execution.standalone import torch_threads
from ranknas.spaces import build_model, load_space
from ranknas.spaces.nasrec_json import from_nasrec_json

FULL_BEST = Path(__file__).parents[3] / "shared" / "nasrec-configs" / "criteo_full_best.json"


@pytest.fixture(scope="module")
def setup():
    with torch_threads(1):  # for the whole module, restored after it
        data = make_synthetic(3000, seed=0)
        space = load_space("nasrec_full")
        if FULL_BEST.exists():  # has transformers: exercises the fused attention too
            arch = from_nasrec_json(space, json.loads(FULL_BEST.read_text()))
        else:
            arch = space.sample(__import__("random").Random(0))
        yield data, space, arch


def trained(setup, steps=6, **options):
    data, space, arch = setup
    model = build_model(space, arch, data.schema, seed=0)
    train(model, data, TrainConfig(steps=steps, batch_size=64, lr=0.05, seed=0, **options))
    return model.state_dict()


def test_index_adagrad_matches_torch_sparse_adagrad(setup, monkeypatch):
    # the dense parameters as the index path updates them (torch's unfused Adagrad math):
    # the CPU's fused kernel rounds lr * g / std in another order, and Adagrad's first steps
    # (lr * sign(g)) turn that into lr-sized differences on near-zero gradients
    monkeypatch.setattr(fast_train, "dense_adagrad",
                        lambda params, lr, eps, weight_decay: torch.optim.Adagrad(
                            params, lr=lr, eps=eps, weight_decay=weight_decay))
    plain, fast = trained(setup), trained(setup, embedding_update="index")
    for key in plain:
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-6)


def test_fused_attention_matches_multihead_attention(setup):
    # SGD keeps updates proportional to gradients; Adagrad's first step is lr * sign(g), which
    # turns rounding-level gradient differences on near-zero rows into lr-sized ones.
    plain = trained(setup, steps=3, optimizer="sgd")
    fast = trained(setup, steps=3, optimizer="sgd", fused_attention=True)
    for key in plain:
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-4, atol=1e-5)


def test_tiny_head_attention_reference_against_sdpa():
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(5, 12, 3 * 16, generator=gen, dtype=torch.float64)
    out, _ = tiny_head_attention(qkv, 8)
    q, k, v = (t.reshape(5, 12, 8, 2).transpose(1, 2) for t in qkv.split(16, dim=-1))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out.reshape(5, 12, 8, 2), ref.transpose(1, 2))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the Triton kernel needs a GPU"))])
def test_tiny_head_attention_key_bias_masks_keys_like_sdpa(device):
    """A 0 / -inf key bias (the masked supernet's padded tokens) == SDPA's additive mask,
    forward and backward; masked keys get no gradient."""
    gen = torch.Generator().manual_seed(1)
    dtype = torch.float64 if device == "cpu" else torch.float32
    qkv = torch.randn(6, 12, 3 * 16, generator=gen, dtype=dtype).to(device).requires_grad_()
    bias = torch.where(torch.arange(12) < 7, 0.0, -math.inf).to(device)
    out, _ = tiny_head_attention(qkv, 8, bias)
    q, k, v = (t.reshape(6, 12, 8, 2).transpose(1, 2) for t in qkv.split(16, dim=-1))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.to(dtype).view(1, 1, 1, 12)).transpose(1, 2).reshape(6, 12, 16)
    grad = torch.randn(out.shape, generator=gen, dtype=dtype).to(device)
    got, = torch.autograd.grad(out, qkv, grad)
    want, = torch.autograd.grad(ref, qkv, grad)
    tol = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(got, want, **tol)
    assert not got[:, 7:, 16:].any()  # keys and values of masked tokens


@pytest.mark.parametrize(("options", "field"), [
    ({"cuda_graph": True}, "cuda_graph"),
    ({"embedding_update": "index", "optimizer": "adam"}, "embedding_update"),
    ({"precision": "fp16"}, "precision"),
])
def test_fast_options_are_validated(options, field):
    with pytest.raises(ConfigError) as err:
        TrainConfig(steps=1, **options)
    assert err.value.where == field


def test_dense_adagrad_is_fused_on_cpu_and_matches_torch():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(64, 32, generator=gen), torch.randn(32, generator=gen)]
    fused = [p.clone().requires_grad_() for p in params]
    plain = [p.clone().requires_grad_() for p in params]
    opt = fast_train.dense_adagrad(fused, lr=0.05, eps=1e-8, weight_decay=0.01)
    ref = torch.optim.Adagrad(plain, lr=0.05, eps=1e-8, weight_decay=0.01)
    assert opt.defaults["fused"] and not ref.defaults["fused"]
    for _ in range(5):
        grads = [1 + torch.rand(p.shape, generator=gen) for p in params]  # away from 0
        for ps, o in ((fused, opt), (plain, ref)):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            o.step()
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
