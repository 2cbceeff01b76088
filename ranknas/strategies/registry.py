"""The strategy registry: built-in strategies by name, plus third-party plugins.

A plugin package exposes its strategy through the entry-point group ``ranknas.strategies``::

    # the plugin's pyproject.toml
    [project.entry-points."ranknas.strategies"]
    mine = "my_package.strategy:MyStrategy"

The entry-point name is the name used in configs (``strategies: [{name: mine}]``). Entry points
are loaded lazily: only when a strategy of that name is made, or when every strategy is listed.
Built-in names take precedence over entry points of the same name.

Options of a strategy are the keyword parameters of its ``__init__`` after ``space``,
``objectives`` and ``seed``; :func:`make_strategy` checks names and (annotated) types before
calling it, so a typo in a config names the option and lists the allowed ones.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from ranknas.errors import ConfigError
from ranknas.evaluator.results import Objective
from ranknas.spaces.space import SearchSpace
from ranknas.strategies.base import Strategy

#: Entry-point group that third-party strategies register under.
ENTRY_POINT_GROUP = "ranknas.strategies"

_BUILTIN_MODULES = (
    "ranknas.strategies.random_search",
    "ranknas.strategies.evolution",
    "ranknas.strategies.optuna_adapter",
    "ranknas.strategies.oneshot",
)
_FIXED_PARAMS = ("self", "space", "objectives", "seed")
_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Register a strategy class under its ``name``; usable as a class decorator.

    Raises:
        ConfigError: ``cls`` is not a Strategy, has no name, or the name is taken by another
            class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError("register_strategy", f"{cls!r} is not a subclass of Strategy")
    if not cls.name:
        raise ConfigError("register_strategy", f"{cls.__qualname__} has no `name` class "
                          "attribute; set one, e.g. name = 'mine'")
    other = _REGISTRY.get(cls.name)
    if other is not None and _qualname(other) != _qualname(cls):
        raise ConfigError("register_strategy", f"name {cls.name!r} of {_qualname(cls)} is "
                          f"already taken by {_qualname(other)}")
    _REGISTRY[cls.name] = cls
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _ensure_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    """Entry points of the group by name, not loaded; names of registered ones excluded."""
    found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in found if ep.name not in _REGISTRY}


def _load(ep: metadata.EntryPoint) -> type[Strategy]:
    where = f"entry point {ENTRY_POINT_GROUP}:{ep.name}"
    try:
        obj = ep.load()
    except Exception as err:  # a broken plugin must not look like a ranknas bug
        raise ConfigError(where, f"plugin strategy {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(err).__name__}: {err}") from err
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise ConfigError(where, f"{ep.value} is {obj!r}, not a subclass of "
                          "ranknas.strategies.Strategy")
    return obj


def _origin(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"plugin {dist.name}" if dist is not None else f"plugin {ep.value}"


def known_names() -> list[str]:
    """Every strategy name, built-in and from entry points, without loading plugins."""
    _ensure_builtins()
    return sorted({*_REGISTRY, *_entry_points()})


def available_strategies() -> dict[str, type[Strategy]]:
    """Every strategy by name: built-in, registered, and loaded from entry points.

    Raises:
        ConfigError: a plugin fails to load; the message names its entry point.
    """
    _ensure_builtins()
    out = dict(_REGISTRY)
    for name, ep in _entry_points().items():
        out[name] = _load(ep)
    return dict(sorted(out.items()))


def get_strategy_class(name: str, where: str = "strategies[].name") -> type[Strategy]:
    """The class registered as ``name``, loading only that plugin if it is one.

    Raises:
        ConfigError: unknown name (the message lists the known ones) or a broken plugin.
    """
    _ensure_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        return _load(eps[name])
    raise ConfigError(where, f"unknown strategy {name!r}; known: {', '.join(known_names())}")


def strategy_options(cls: type[Strategy]) -> dict[str, inspect.Parameter]:
    """The options ``cls`` accepts: keyword parameters of ``__init__`` after the fixed ones."""
    params = inspect.signature(cls.__init__).parameters
    return {n: p for n, p in params.items()
            if n not in _FIXED_PARAMS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def make_strategy(name: str, space: SearchSpace, objectives: Sequence[Objective],
                  seed: int = 0, *, where: str = "strategies[]", **options: Any) -> Strategy:
    """Build the strategy registered as ``name``.

    Args:
        name: Registry name, e.g. ``random``, ``evolution``, ``optuna`` or a plugin's.
        space: The search space.
        objectives: What to optimise.
        seed: Seeds the strategy's own generator.
        where: Config path of this strategy entry for error messages, e.g. ``strategies[1]``.
        **options: Strategy options, e.g. ``population=32`` for evolution.

    Raises:
        ConfigError: unknown name, unknown option, missing option or ill-typed option value;
            ``where`` names the field (``strategies[1].population``).
    """
    cls = get_strategy_class(name, f"{where}.name")
    allowed = strategy_options(cls)
    takes_any = any(p.kind is p.VAR_KEYWORD
                    for p in inspect.signature(cls.__init__).parameters.values())
    listing = ", ".join(allowed) or "none"
    if not takes_any:
        for key in options:
            if key not in allowed:
                raise ConfigError(f"{where}.{key}", f"unknown option for strategy {name!r}; "
                                  f"allowed: {listing}")
    missing = [n for n, p in allowed.items() if p.default is p.empty and n not in options]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}", f"strategy {name!r} needs this option")
    hints = _type_hints(cls)
    for key, value in options.items():
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise ConfigError(f"{where}.{key}", f"expected {_describe(hint)}, got "
                              f"{value!r} ({type(value).__name__})")
    return cls(space, objectives, seed=seed, **options)


def describe_strategies() -> list[tuple[str, str, str]]:
    """``(name, origin, one-line doc)`` of every strategy, for ``ranknas strategies list``.

    A plugin that fails to load is listed with its error instead of breaking the listing.
    """
    _ensure_builtins()
    rows = [(n, "ranknas" if cls.__module__.startswith("ranknas.") else cls.__module__,
             _first_line(cls)) for n, cls in _REGISTRY.items()]
    for name, ep in _entry_points().items():
        try:
            rows.append((name, _origin(ep), _first_line(_load(ep))))
        except ConfigError as err:
            rows.append((name, _origin(ep), f"BROKEN: {err.message}"))
    return sorted(rows)


def _first_line(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


# -- option type checks ---------------------------------------------------------------------
def _type_hints(cls: type[Strategy]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: skip the type check, never crash on them
        return {}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type hint; unknown hint forms are accepted."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is not None:
        hint = origin
    if not isinstance(hint, type):
        return True
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (Mapping, dict):
        return isinstance(value, Mapping)
    if hint in (Sequence, list, tuple):
        return isinstance(value, list | tuple)
    try:
        return isinstance(value, hint)
    except TypeError:
        return True


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None) or hint is None:
        return "null"
    if origin is not None:
        hint = origin
    return {Mapping: "a mapping", dict: "a mapping", Sequence: "a list", list: "a list",
            tuple: "a list"}.get(hint, getattr(hint, "__name__", str(hint)))
