"""supernet(batch, arch) == supernet.extract(arch)(batch) for random architectures of every
space, and the extracted model is exactly what build_model returns, with inherited weights."""

from __future__ import annotations

import random

import pytest
import torch

from ranknas.spaces import BUILTIN_SPACES, RankingModel, build_model

SPACES = (*sorted(BUILTIN_SPACES), "examples/my_space.yaml")

N_ARCHS = 20
CAPPED = {"rankitect"}
TOL = 1e-6


@pytest.mark.parametrize("name", SPACES)
def test_extract_matches_supernet(name, shared_supernet, tiny_schema, batch):
    supernet = shared_supernet(name)
    space = supernet.space
    dense, sparse, _ = batch
    rng = random.Random(1)
    supernet_params = sum(p.numel() for p in supernet.parameters())
    for _ in range(N_ARCHS):
        arch = space.sample(rng)
        with torch.no_grad():
            expected = supernet(dense, sparse, arch)
            model = supernet.extract(arch)
            got = model(dense, sparse)
        assert type(model) is RankingModel and not model.training
        diff = (expected - got).abs().max().item()
        assert diff <= TOL, f"{name} {arch.arch_id}: |supernet - extracted| = {diff}"
        params = sum(p.numel() for p in model.parameters())
        assert params == space.materialize(arch, tiny_schema).params
        if name not in CAPPED:  # with the cap binding, tied weights expand on extraction
            assert params <= supernet_params
        del model  # rankitect samples reach 80M parameters: hold one at a time


@pytest.mark.parametrize("name", ["dlrm", "nasrec_full"])
def test_extract_is_what_build_model_returns(name, shared_supernet, tiny_schema):
    supernet = shared_supernet(name)
    arch = supernet.space.sample(random.Random(4))
    got = supernet.extract(arch).state_dict()
    fresh = build_model(supernet.space, arch, tiny_schema).state_dict()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in fresh.items()}


def test_extracted_model_is_independent(shared_supernet, batch):
    supernet = shared_supernet("nasrec_small")
    dense, sparse, _ = batch
    arch = supernet.space.sample(random.Random(2))
    model = supernet.extract(arch)
    with torch.no_grad():
        before = supernet(dense, sparse, arch)
        for p in model.parameters():
            p.add_(1.0)
        assert torch.equal(supernet(dense, sparse, arch), before)


def test_train_mode_matches_too(shared_supernet, batch):
    """No dropout anywhere: train mode (no fast attention path) is exact as well."""
    supernet = shared_supernet("nasrec_full")
    dense, sparse, _ = batch
    rng = random.Random(3)
    supernet.train()
    try:
        for _ in range(5):
            arch = supernet.space.sample(rng)
            model = supernet.extract(arch)
            assert model.training
            diff = (supernet(dense, sparse, arch) - model(dense, sparse)).abs().max().item()
            assert diff <= TOL
    finally:
        supernet.eval()


def test_extract_like_slices_other_tensors_as_the_weights():
    from ranknas.spaces import load_space
    from ranknas.supernet import Supernet

    space = load_space("nasrec_small")
    supernet = Supernet(space, seed=0)
    arch = space.sample(random.Random(0))
    weights = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    model = supernet.extract(arch)
    same = supernet.extract_like(arch, weights)
    for name, p in model.named_parameters():
        assert torch.equal(same[name], p), name
    only_head = supernet.extract_like(arch, {"head_bias": torch.ones(1)})
    assert float(only_head["head.bias"]) == 1.0
    assert all(float(t.abs().sum()) == 0 for n, t in only_head.items() if n != "head.bias")
    assert torch.equal(supernet.head_bias, weights["head_bias"])  # the supernet is untouched
    # values saved elsewhere (a worker's sums: CPU float64 here) take the parameter's form
    wide = supernet.extract_like(arch, {n: t.double() for n, t in weights.items()})
    assert all(wide[n].dtype == torch.float32 for n in wide)
