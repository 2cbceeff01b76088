import contextlib
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranknas.errors import InvalidArchitecture
from ranknas.spaces import BUILTIN_SPACES, Architecture, load_space

SPACES = {name: load_space(name) for name in BUILTIN_SPACES}
names = st.sampled_from(sorted(SPACES))
seeds = st.integers(0, 2**32 - 1)
fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(names, seeds)
def test_json_round_trip_keeps_arch_id(name, seed):
    space = SPACES[name]
    arch = space.sample(random.Random(seed))
    text = json.dumps(arch.to_json())
    again = space.from_json(json.loads(text))
    assert again == arch == Architecture.from_json(json.loads(text))
    assert again.arch_id == arch.arch_id


@fast
@given(names, seeds)
def test_mutation_stays_valid_and_moves(name, seed):
    space = SPACES[name]
    rng = random.Random(seed)
    arch = space.sample(rng)
    child = space.mutate(arch, rng)
    space.validate(child)
    assert child.arch_id != arch.arch_id


@fast
@given(names, seeds)
def test_inactive_decisions_do_not_change_the_id(name, seed):
    space = SPACES[name]
    rng = random.Random(seed)
    arch = space.sample(rng)
    inactive = [c for c in space.choices() if c.name not in arch.as_dict()]
    values = arch.as_dict()
    values.update({c.name: c.sample(rng) for c in inactive})
    assert space.canonicalize(values).arch_id == arch.arch_id


def test_same_seed_same_architectures():
    space = SPACES["nasrec_full"]
    a = [space.sample(random.Random(7)).arch_id for _ in range(3)]
    assert len(set(a)) == 1
    assert space.sample(random.Random(8)).arch_id != a[0]


def test_arch_id_hashes_canonical_json():
    arch = Architecture("s", "1", (("b", 2), ("a", ("x", "y"))))
    assert arch.dumps() == '{"choices":{"a":["x","y"],"b":2},"space":"s","version":"1"}'
    assert arch.arch_id == Architecture("s", "1", (("a", ("x", "y")), ("b", 2))).arch_id


def _broken_docs(arch):
    good = arch.to_json()
    name, _ = next(iter(good["choices"].items()))
    yield [1, 2], "architecture"
    yield {"space": arch.space}, "missing key 'choices'"
    yield {**good, "space": "nope"}, "architecture.space"
    yield {**good, "choices": {**good["choices"], "zz.op": "x"}}, "zz.op"
    yield {**good, "choices": {k: v for k, v in good["choices"].items() if k != name}}, name
    yield {**good, "choices": {**good["choices"], name: "not-a-value"}}, name
    yield {**good, "choices": {**good["choices"], name: {"a": 1}}}, name


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_broken_json_names_the_field(name):
    space = SPACES[name]
    arch = space.sample(random.Random(0))
    for doc, needle in _broken_docs(arch):
        with pytest.raises(InvalidArchitecture) as err:
            space.from_json(doc)
        assert needle in str(err.value), (doc, str(err.value))


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                        max_size=3)))
def test_arbitrary_json_never_escapes_as_traceback(doc):
    space = SPACES["nasrec_small"]
    for obj in (doc, {"space": "nasrec_small", "choices": doc}):
        with contextlib.suppress(InvalidArchitecture):
            space.from_json(obj)


def test_subset_decisions_are_canonical_sets():
    space = SPACES["nasrec_full"]
    arch = space.sample(random.Random(3))
    values = arch.as_dict()
    key = next(k for k, v in values.items() if isinstance(v, tuple) and len(v) > 1)
    values[key] = list(reversed(values[key]))
    assert space.canonicalize(values).arch_id == arch.arch_id


def test_size_is_log10_and_plausible():
    assert 5 < SPACES["dlrm"].size() < 8
    assert SPACES["nasrec_full"].size() > SPACES["nasrec_small"].size() > 20
