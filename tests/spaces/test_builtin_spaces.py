import pickle
import random

import pytest
import torch

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import BUILTIN_SPACES, build_model, load_space

N_ARCHS = 50


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_random_architectures_train_a_step(name, tiny_schema):
    space = load_space(name)
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(4, tiny_schema.num_dense, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (4,), generator=gen)
                          for c in tiny_schema.cardinalities], dim=1)
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0])
    for i in range(N_ARCHS):
        arch = space.sample(rng)
        model = build_model(space, arch, tiny_schema, seed=i)
        logits = model(dense, sparse)
        assert logits.shape == (4,)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        assert torch.isfinite(loss), arch.to_json()
        loss.backward()
        grad = model.embedding.table.weight.grad
        assert grad is not None and grad.is_sparse
        graph = space.materialize(arch, tiny_schema)
        assert graph.params == sum(p.numel() for p in model.parameters()), arch.arch_id


def test_same_seed_same_weights(tiny_schema):
    space = load_space("nasrec_full")
    arch = space.sample(random.Random(1))
    a = build_model(space, arch, tiny_schema, seed=3).state_dict()
    b = build_model(space, arch, tiny_schema, seed=3).state_dict()
    c = build_model(space, arch, tiny_schema, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_build_does_not_touch_global_rng(tiny_schema):
    space = load_space("dlrm")
    arch = space.sample(random.Random(0))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(space, arch, tiny_schema, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_materialized_graph_is_a_dag_of_active_nodes(space):
    arch = space.sample(random.Random(5))
    graph = space.materialize(arch)
    import networkx as nx

    g = graph.to_networkx()
    assert nx.is_directed_acyclic_graph(g)
    assert nx.ancestors(g, "output") | {"output"} >= set(g) - {"dense", "sparse"}
    assert graph.flops > 0 and graph.summary().count("\n") == len(graph.nodes) + 1


def test_materialized_graphs_are_kept_per_architecture_and_schema(space, tiny_schema,
                                                                   monkeypatch):
    import ranknas.spaces.space as space_module

    monkeypatch.setattr(space_module, "MATERIALIZED_CACHE", 2)
    rng = random.Random(6)
    arch = space.sample(rng)
    graph = space.materialize(arch)
    assert space.materialize(arch) is graph
    other = space.materialize(arch, tiny_schema)  # a second entry
    assert other is not graph and other.schema == tiny_schema
    assert space.materialize(arch, tiny_schema) is other
    space.materialize(arch, DataSchema(1, (5,), "third"))  # a third entry evicts the first
    again = space.materialize(arch)
    assert again is not graph and again == graph


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_materializing_reuses_canonicalize_walk_exactly(name):
    # canonicalize keeps its resolved decisions for the materialize that follows; a space
    # that never canonicalized the architecture must build the same graph
    space, fresh = load_space(name), load_space(name)
    rng = random.Random(7)
    for _ in range(10):
        arch = space.sample(rng)
        assert arch.arch_id in space._plans
        assert space.materialize(arch) == fresh.materialize(arch)


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_a_pickled_space_draws_and_materializes_the_same(name, tiny_schema):
    space = load_space(name)
    space.materialize(space.sample(random.Random(0)), tiny_schema)  # caches, not pickled
    copy = pickle.loads(pickle.dumps(space))
    assert copy._materialized == {} and [c.name for c in copy.choices()] == [
        c.name for c in space.choices()]
    for seed in range(3):
        a, b = space.sample(random.Random(seed)), copy.sample(random.Random(seed))
        assert a.arch_id == b.arch_id
        assert space.materialize(a, tiny_schema) == copy.materialize(b, tiny_schema)
