"""Weight sharing, gradient isolation, plan caching, seeding, size guards and parameter counts."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from ranknas.errors import ConfigError, InvalidArchitecture
from ranknas.spaces import Architecture, Categorical, Subset, build_model, load_space
from ranknas.supernet import Supernet


def _loss(supernet: Supernet, arch, batch) -> torch.Tensor:
    dense, sparse, labels = batch
    return F.binary_cross_entropy_with_logits(supernet(dense, sparse, arch), labels)


def _arch_with_narrow_linear(space, rng):
    for _ in range(200):
        arch = space.sample(rng)
        for name, value in arch.choices:
            block = name.removesuffix(".op")
            if (name.endswith(".op") and value == "linear-2d"
                    and arch.get(f"{block}.width", 1024) < 1024):
                return arch, block
    raise AssertionError("no architecture with a narrow linear-2d")


def test_gradients_reach_only_the_slices_used(tiny_schema, batch):
    space = load_space("nasrec_full")
    supernet = Supernet(space, tiny_schema, seed=0)
    arch, block = _arch_with_narrow_linear(space, random.Random(0))
    _loss(supernet, arch, batch).backward()
    plan = supernet.plan(arch)
    active = set(plan.modules)
    for key, module in supernet.elastic.items():
        grads = [p.grad for p in module.parameters()]
        if key not in active:
            assert all(g is None for g in grads), f"unselected {key} got a gradient"
    step = next(s for s, k in zip(plan.steps, plan.modules, strict=True)
                if k == f"{block.replace('.', '/')}:linear-2d:0")
    grad = step.module.fc.weight.grad
    width, cols = step.width, step.layout["x"].cols
    used = torch.zeros_like(grad, dtype=torch.bool)
    used[:width, cols] = True
    assert grad[~used].abs().max() == 0, "gradient outside the used rows/columns"
    assert grad[used].abs().max() > 0
    assert step.module.norm.weight.grad[width:].abs().max() == 0
    head = torch.zeros(supernet.head_weight.shape[1], dtype=torch.bool)
    head[plan.head_cols] = True
    assert supernet.head_weight.grad[0, ~head].abs().max() == 0
    assert supernet.embedding.table.weight.grad.is_sparse


def test_weights_are_shared_between_architectures(tiny_schema, batch):
    space = load_space("nasrec_small")
    supernet = Supernet(space, tiny_schema, seed=0)
    rng = random.Random(5)
    a = space.sample(rng)
    b = next(x for x in (space.sample(rng) for _ in range(50))
             if x.arch_id != a.arch_id and set(supernet.active_modules(x))
             - set(supernet.active_modules(a)))
    only_b = set(supernet.active_modules(b)) - set(supernet.active_modules(a))
    dense, sparse, _ = batch
    with torch.no_grad():
        before_b = supernet(dense, sparse, b)
    untouched = {k: [p.detach().clone() for p in supernet.elastic[k].parameters()]
                 for k in only_b}
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.5)
    _loss(supernet, a, batch).backward()
    optimizer.step()
    with torch.no_grad():
        after_b = supernet(dense, sparse, b)
    assert not torch.allclose(before_b, after_b), "training a did not move b: nothing shared"
    for key, params in untouched.items():
        assert all(torch.equal(p, q) for p, q in
                   zip(params, supernet.elastic[key].parameters(), strict=True)), key


def test_architecture_is_always_an_argument(shared_supernet, batch):
    supernet = shared_supernet("nasrec_full")
    dense, sparse, _ = batch
    rng = random.Random(7)
    a, b = supernet.space.sample(rng), supernet.space.sample(rng)
    with torch.no_grad():
        first = supernet(dense, sparse, a)
        supernet(dense, sparse, b)
        assert torch.equal(supernet(dense, sparse, a), first)


def test_plan_cache_is_a_bounded_lru(tiny_schema, batch):
    space = load_space("examples/my_space.yaml")
    supernet = Supernet(space, tiny_schema, plan_cache_size=3)
    rng = random.Random(0)
    archs = []
    while len(archs) < 5:
        arch = space.sample(rng)
        if arch.arch_id not in {x.arch_id for x in archs}:
            archs.append(arch)
    for arch in archs:
        supernet.plan(arch)
    supernet.plan(archs[2])  # refresh: archs[3] is now the oldest
    assert list(supernet._plans) == [archs[i].arch_id for i in (3, 4, 2)]
    assert supernet.plan(archs[4]) is supernet.plan(archs[4])
    supernet.to("cpu")  # moving the module drops device-bound caches
    assert not supernet._plans


def test_foreign_or_invalid_architectures_raise(shared_supernet, batch):
    supernet = shared_supernet("nasrec_small")
    dense, sparse, _ = batch
    other = load_space("dlrm").sample(random.Random(0))
    with pytest.raises(InvalidArchitecture, match="dlrm"):
        supernet(dense, sparse, other)
    arch = supernet.space.sample(random.Random(0))
    missing = Architecture(arch.space, arch.version, arch.choices[1:])
    with pytest.raises(InvalidArchitecture, match=arch.choices[0][0]):
        supernet(dense, sparse, missing)


def test_seeded_init_leaves_global_rng_alone(tiny_schema):
    space = load_space("examples/my_space.yaml")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = Supernet(space, tiny_schema, seed=3).state_dict()
    assert torch.equal(torch.rand(3), expected)
    b = Supernet(space, tiny_schema, seed=3).state_dict()
    c = Supernet(space, tiny_schema, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_size_guards(tiny_schema):
    space = load_space("rankitect")
    with pytest.raises(ConfigError, match="max_slot"):
        Supernet(space, tiny_schema, max_params=1_000_000)
    with pytest.raises(ConfigError, match="max_slot"):
        Supernet(space, tiny_schema, max_slot=0)


def test_wrapped_inputs_stay_exact(shared_supernet, batch):
    """rankitect under a small cap: over-wide sources reuse weights modulo the cap."""
    supernet = shared_supernet("rankitect")
    dense, sparse, _ = batch
    rng = random.Random(11)
    for _ in range(100):
        arch = supernet.space.sample(rng)
        plan = supernet.plan(arch)
        wrapped = any(isinstance(c.cols, torch.Tensor) and c.cols.unique().numel()
                      < c.cols.numel() for s in plan.steps for c in s.layout.values())
        if wrapped:
            break
    else:
        pytest.fail("no rankitect architecture exceeded the cap")
    with torch.no_grad():
        diff = (supernet(dense, sparse, arch) - supernet.extract(arch)(dense, sparse)).abs()
    assert diff.max().item() <= 1e-6


def _widest(space):
    """Widest values everywhere: largest ints, switches on, the most (latest) inputs, and the
    op with the most parameters (linear-2d / transformer where offered)."""
    values = {}
    for choice in space.choices():
        if isinstance(choice, Subset):
            values[choice.name] = choice.candidates[-choice.max_size:]
        elif isinstance(choice, Categorical):
            opts = choice.options
            if all(isinstance(o, bool) for o in opts):
                values[choice.name] = True
            elif all(isinstance(o, int) for o in opts):
                values[choice.name] = max(opts)
            else:
                pick = [o for o in opts if o in ("linear-2d", "transformer")]
                values[choice.name] = pick[0] if pick else opts[-1]
    return space.canonicalize(values)


def _dense_params(model) -> int:
    return sum(p.numel() for p in model.dense_parameters())


@pytest.mark.parametrize("name", ["dlrm", "nasrec_small", "nasrec_full"])
def test_parameter_count_against_the_widest_standalone(name, shared_supernet, tiny_schema):
    supernet = shared_supernet(name)
    widest = build_model(supernet.space, _widest(supernet.space), tiny_schema)
    ratio = _dense_params(supernet) / _dense_params(widest)
    # Every candidate op and source at its widest, side by side: a few times the widest
    # single model, never the product of the choices.
    assert 1 <= ratio < 15, f"{name}: supernet / widest standalone = {ratio:.2f}"
    assert supernet.embedding.table.weight.shape == widest.embedding.table.weight.shape
