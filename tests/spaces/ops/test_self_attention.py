"""``self_attention``: the module's math on CPU by another route, and the module where that
route does not apply."""

from __future__ import annotations

import torch
from torch import nn

from ranknas.spaces.ops.sparse import self_attention


def _setup(dropout: float = 0.0) -> tuple[nn.MultiheadAttention, torch.Tensor]:
    torch.manual_seed(0)
    return (nn.MultiheadAttention(16, 8, dropout=dropout, batch_first=True),
            torch.randn(5, 7, 16, requires_grad=True))


def test_equals_the_module_and_its_gradients() -> None:
    attn, z = _setup()
    want = attn(z, z, z, need_weights=False)[0]
    got = self_attention(attn, z)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    leaves = [z, *attn.parameters()]
    for g, w in zip(torch.autograd.grad(got, leaves, grad), torch.autograd.grad(want, leaves, grad),
                    strict=True):
        torch.testing.assert_close(g, w)


def test_a_patched_forward_runs() -> None:
    attn, z = _setup()
    calls = []
    original = attn.forward

    def forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    attn.forward = forward  # as TrainConfig.fused_attention patches it
    self_attention(attn, z)
    assert calls == [1]


def test_a_module_with_dropout_runs_itself_in_training() -> None:
    attn, z = _setup(dropout=0.5)
    torch.manual_seed(1)
    got = self_attention(attn.train(), z)
    torch.manual_seed(1)
    torch.testing.assert_close(got, attn(z, z, z, need_weights=False)[0])
    torch.testing.assert_close(self_attention(attn.eval(), z),
                               attn(z, z, z, need_weights=False)[0])
