"""Path samplers: determinism, validity, warm-up schedule, balance, input caps, resume."""

from __future__ import annotations

import pickle

import pytest
import torch

from ranknas.errors import ConfigError
from ranknas.spaces import load_space
from ranknas.spaces.choices import Subset
from ranknas.spaces.yaml_space import space_from_dict
from ranknas.supernet import SAMPLERS, WarmupSampler, make_sampler

TINY = {
    "name": "tiny",
    "inputs": {"dense": 4, "sparse": 3, "embedding_dim": 4},
    "blocks": [
        {"id": "b1", "ops": ["linear-2d", "dot-product"], "width": [4, 8],
         "inputs": {"from": ["dense", "sparse"], "max": 2}},
        {"id": "b2", "ops": ["linear-2d", "sigmoid-gating", "sum"], "width": [4, 8],
         "inputs": {"from": "any-earlier", "max": 3}},
        {"id": "b3", "ops": ["linear-2d"], "width": [4, 8],
         "inputs": {"from": ["b1", "b2"], "min": 1}},
    ],
    "output": {"from": "last"},
}
SPACES = ("nasrec_full", "dlrm", "examples/my_space.yaml")
OPTIONS = {"warmup": {"warmup_steps": 5}}


@pytest.fixture(scope="module")
def tiny():
    return space_from_dict(TINY)


def _draws(sampler, n: int, start: int = 0) -> list[str]:
    return [sampler.sample(step).arch_id for step in range(start, start + n)]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("space_name", SPACES)
def test_deterministic_per_seed_and_valid(name, space_name):
    space = load_space(space_name)
    a, b, c = (make_sampler(name, space, seed, **OPTIONS.get(name, {})) for seed in (3, 3, 4))
    archs = [a.sample(step) for step in range(12)]
    assert [x.arch_id for x in archs] == _draws(b, 12)
    assert [x.arch_id for x in archs] != _draws(c, 12)
    for arch in archs:
        space.validate(arch)  # canonical and materializes


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_state_dict_round_trip_gives_the_same_next_samples(tiny, name, tmp_path):
    sampler = make_sampler(name, tiny, 7, **OPTIONS.get(name, {}))
    _draws(sampler, 9)
    state = sampler.state_dict()
    # JSON-able plain values only: survives a weights_only torch round trip.
    path = tmp_path / "sampler.pt"
    torch.save(state, path)
    state = torch.load(path, weights_only=True)
    fresh = make_sampler(name, tiny, 99, **OPTIONS.get(name, {}))
    fresh.load_state_dict(state)
    assert _draws(fresh, 10, start=9) == _draws(sampler, 10, start=9)
    assert pickle.loads(pickle.dumps(state)) == state


def test_warmup_probability_schedule(tiny):
    sampler = make_sampler("warmup", tiny, 0, warmup_steps=100, inner="uniform")
    full = sampler.full_path().arch_id
    assert [sampler.probability(s) for s in (0, 25, 50, 100, 150)] == [1, .75, .5, 0, 0]
    for step, expected in ((0, 1.0), (25, 0.75), (50, 0.5), (75, 0.25), (100, 0.0)):
        n = 400
        hits = sum(sampler.sample(step).arch_id == full for _ in range(n)) / n
        # The inner uniform sampler hits the full path by chance with prob << 0.05.
        assert abs(hits - expected) < 0.08, (step, hits)


def test_warmup_full_path_is_the_largest_single_path(tiny):
    sampler = make_sampler("warmup", tiny, 0, warmup_steps=10)
    arch = sampler.full_path()
    assert arch["b1.width"] == 8 and arch["b2.width"] == 8 and arch["b3.width"] == 8
    assert arch["b1.in"] == ("dense", "sparse") and len(arch["b2.in"]) == 3
    graph = tiny.materialize(arch)
    for block in ("b1", "b2"):
        params = {}
        for op in tiny.choice(f"{block}.op").options:
            values = {**arch.as_dict(), f"{block}.op": op}
            try:
                g = tiny.materialize(tiny.canonicalize(values))
            except ConfigError:
                continue
            params[op] = sum(n.cost.params for n in g.nodes if n.block == block)
        chosen = sum(n.cost.params for n in graph.nodes if n.block == block)
        assert chosen == max(params.values())
    assert isinstance(sampler, WarmupSampler)


def test_balanced_counts_stay_within_one(tiny):
    space = load_space("nasrec_full")
    for sp in (tiny, space):
        sampler = make_sampler("balanced", sp, 1)
        for step in range(60):
            sampler.sample(step)
            for block, counts in sampler.counts.items():
                assert max(counts.values()) - min(counts.values()) <= 1, (block, counts)
        assert all(min(c.values()) > 0 for c in sampler.counts.values())


def test_any_path_respects_max_inputs_and_draws_every_size():
    space = load_space("nasrec_full")
    sampler = make_sampler("any-path", space, 0, max_inputs=2)
    subsets = [c for c in space.choices() if isinstance(c, Subset)]
    sizes = set()
    for step in range(40):
        arch = sampler.sample(step)
        for c in subsets:
            if c.name in arch.as_dict():
                assert len(arch[c.name]) <= 2
                sizes.add(len(arch[c.name]))
    assert sizes == {1, 2}
    uncapped = make_sampler("any-path", space, 0)
    assert max(len(uncapped.sample(s).get(c.name, ())) for s in range(40) for c in subsets) > 2


@pytest.mark.parametrize(("name", "options", "where"), [
    ("nope", {}, "supernet.sampler"),
    ("uniform", {"max_inputs": 2}, "supernet.sampler.max_inputs"),
    ("any-path", {"max_inputs": 0}, "supernet.sampler.max_inputs"),
    ("warmup", {"warmup_steps": 0}, "supernet.sampler.warmup_steps"),
    ("warmup", {"inner": "warmup"}, "supernet.sampler.inner"),
    ("warmup", {"inner": "bogus"}, "supernet.sampler"),
    ("warmup", {"inner": "balanced", "max_inputs": 2}, "supernet.sampler.max_inputs"),
])
def test_bad_names_and_options_raise_config_error(tiny, name, options, where):
    with pytest.raises(ConfigError) as err:
        make_sampler(name, tiny, 0, **options)
    assert err.value.where == where
    if name == "nope":
        assert all(n in str(err.value) for n in SAMPLERS)
