"""Whole-model analytic FLOPs and params against PyTorch's own counts."""

import random

import pytest
import torch

from ranknas.evaluator.flops import counted_flops
from ranknas.spaces import BUILTIN_SPACES, build_model, load_space


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_matmul_flops_match_flop_counter(name, tiny_schema):
    space = load_space(name)
    rng = random.Random(11)
    batch = 2
    for _ in range(8):
        arch = space.sample(rng)
        graph = space.materialize(arch, tiny_schema)
        model = build_model(space, arch, tiny_schema)
        dense = torch.randn(batch, tiny_schema.num_dense)
        sparse = torch.zeros(batch, tiny_schema.num_sparse, dtype=torch.long)
        measured = counted_flops(model, dense, sparse) / batch
        assert measured == pytest.approx(graph.cost.matmul_flops, rel=0.01), arch.arch_id
        assert graph.flops >= graph.cost.matmul_flops
