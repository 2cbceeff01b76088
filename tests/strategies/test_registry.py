"""The strategy registry: names, options, types, and entry-point plugins."""

from __future__ import annotations

import sys
import types
from importlib import metadata

import pytest

from ranknas.errors import ConfigError
from ranknas.strategies import (
    Proposal,
    Strategy,
    available_strategies,
    describe_strategies,
    make_strategy,
    register_strategy,
    registry,
)
from ranknas.testing.strategies import toy_objectives, toy_space

BUILTIN = {"random", "evolution", "optuna"}


class FakeStrategy(Strategy):
    """A plugin's strategy: always the first draw."""

    name = "fake"

    def __init__(self, space, objectives, seed=0, flavour: str = "plain") -> None:
        super().__init__(space, objectives, seed)
        self.flavour = flavour

    def ask(self) -> Proposal:
        return self._proposal(self.space.sample(self.rng))

    def tell(self, proposal, result) -> None:
        pass


@pytest.fixture
def clean_registry(monkeypatch):
    registry._ensure_builtins()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture
def plugins(monkeypatch, clean_registry):
    """Fake entry points: a good plugin, one that fails to import, one that is no Strategy."""
    module = types.ModuleType("fake_ranknas_plugin")
    module.FakeStrategy = FakeStrategy
    module.not_a_strategy = object()
    monkeypatch.setitem(sys.modules, "fake_ranknas_plugin", module)
    group = registry.ENTRY_POINT_GROUP
    eps = {
        "fake": metadata.EntryPoint("fake", "fake_ranknas_plugin:FakeStrategy", group),
        "broken": metadata.EntryPoint("broken", "no_such_module_xyz:Thing", group),
        "wrong": metadata.EntryPoint("wrong", "fake_ranknas_plugin:not_a_strategy", group),
    }
    loaded = []

    def entry_points(*, group=None, **_):
        assert group == registry.ENTRY_POINT_GROUP
        return [_Spy(ep, loaded) for ep in eps.values()]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    return loaded


class _Spy:
    """An entry point that records when it is loaded."""

    def __init__(self, ep, loaded) -> None:
        self._ep, self._loaded = ep, loaded
        self.name, self.value, self.dist = ep.name, ep.value, None

    def load(self):
        self._loaded.append(self.name)
        return self._ep.load()


def test_builtins_are_available():
    found = available_strategies()
    assert set(found) >= BUILTIN
    assert all(issubclass(cls, Strategy) for cls in found.values())
    rows = {name: (origin, doc) for name, origin, doc in describe_strategies()}
    assert set(rows) >= BUILTIN
    assert all(origin == "ranknas" and doc for origin, doc in (rows[n] for n in BUILTIN))


def test_unknown_name_lists_known():
    with pytest.raises(ConfigError) as err:
        make_strategy("evolutoin", toy_space(), toy_objectives())
    assert err.value.where == "strategies[].name"
    assert "evolutoin" in str(err.value) and all(n in str(err.value) for n in BUILTIN)


def test_unknown_option_names_it_and_lists_allowed():
    with pytest.raises(ConfigError) as err:
        make_strategy("evolution", toy_space(), toy_objectives(), populaton=8)
    assert err.value.where == "strategies[].populaton"
    assert "population" in err.value.message and "sample_size" in err.value.message


def test_where_prefix_is_the_callers():
    with pytest.raises(ConfigError) as err:
        make_strategy("random", toy_space(), toy_objectives(), where="strategies[2]", bogus=1)
    assert err.value.where == "strategies[2].bogus"


@pytest.mark.parametrize(("name", "options", "where"), [
    ("evolution", {"population": "32"}, "population"),
    ("evolution", {"population": True}, "population"),
    ("evolution", {"sample_size": 2.5}, "sample_size"),
    ("random", {"max_trials": "10"}, "max_trials"),
    ("optuna", {"sampler": 3}, "sampler"),
    ("optuna", {"sampler_options": ["n_startup_trials", 5]}, "sampler_options"),
])
def test_ill_typed_option(name, options, where):
    with pytest.raises(ConfigError) as err:
        make_strategy(name, toy_space(), toy_objectives(), **options)
    assert err.value.where == f"strategies[].{where}"
    assert "expected" in err.value.message


@pytest.mark.parametrize(("options", "where"), [
    ({"population": 1}, "strategies[].population"),
    ({"population": 4, "sample_size": 5}, "strategies[].sample_size"),
])
def test_bad_option_values(options, where):
    with pytest.raises(ConfigError) as err:
        make_strategy("evolution", toy_space(), toy_objectives(), **options)
    assert err.value.where == where


def test_well_typed_options_pass():
    s = make_strategy("random", toy_space(), toy_objectives(), seed=3, max_trials=None)
    assert s.seed == 3 and s.max_trials is None
    s = make_strategy("optuna", toy_space(), toy_objectives(), sampler="RandomSampler",
                      sampler_options={})
    assert s.ask() is not None


def test_register_strategy_rules(clean_registry):
    with pytest.raises(ConfigError, match="not a subclass"):
        register_strategy(object)

    class Nameless(FakeStrategy):
        name = ""

    with pytest.raises(ConfigError, match="no `name`"):
        register_strategy(Nameless)

    class Impostor(FakeStrategy):
        name = "random"

    with pytest.raises(ConfigError, match="already taken"):
        register_strategy(Impostor)
    assert register_strategy(FakeStrategy) is FakeStrategy
    assert register_strategy(FakeStrategy) is FakeStrategy  # idempotent
    assert make_strategy("fake", toy_space(), toy_objectives(), flavour="x").flavour == "x"


def test_entry_point_plugin_is_discovered_and_made(plugins):
    strategy = make_strategy("fake", toy_space(), toy_objectives(), seed=1, flavour="spicy")
    assert isinstance(strategy, FakeStrategy) and strategy.flavour == "spicy"
    assert plugins == ["fake"]  # lazily: only the plugin asked for was loaded
    with pytest.raises(ConfigError) as err:
        make_strategy("fake", toy_space(), toy_objectives(), colour="red")
    assert err.value.where == "strategies[].colour" and "flavour" in err.value.message


def test_builtins_never_load_plugins(plugins):
    make_strategy("random", toy_space(), toy_objectives())
    assert plugins == []


def test_unknown_name_lists_plugins_without_loading_them(plugins):
    with pytest.raises(ConfigError) as err:
        make_strategy("nope", toy_space(), toy_objectives())
    assert "fake" in err.value.message and "broken" in err.value.message
    assert plugins == []


def test_broken_plugin_error_names_it(plugins):
    with pytest.raises(ConfigError) as err:
        make_strategy("broken", toy_space(), toy_objectives())
    assert "broken" in str(err.value) and "no_such_module_xyz" in str(err.value)
    assert "ranknas.strategies:broken" in err.value.where
    with pytest.raises(ConfigError, match="not a subclass of"):
        make_strategy("wrong", toy_space(), toy_objectives())
    with pytest.raises(ConfigError, match="broken"):
        available_strategies()


def test_listing_shows_plugins_and_survives_broken_ones(plugins):
    rows = {name: (origin, doc) for name, origin, doc in describe_strategies()}
    assert BUILTIN | {"fake", "broken", "wrong"} <= set(rows)
    assert rows["fake"] == ("plugin fake_ranknas_plugin:FakeStrategy",
                            "A plugin's strategy: always the first draw.")
    assert rows["broken"][1].startswith("BROKEN:")


def test_builtin_name_wins_over_entry_point(monkeypatch, clean_registry):
    ep = metadata.EntryPoint("random", "fake_ranknas_plugin:FakeStrategy",
                             registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda **_: [ep])
    assert available_strategies()["random"].__module__ == "ranknas.strategies.random_search"
