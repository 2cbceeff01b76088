"""Path samplers: which architecture (single path) the supernet trains at each step.

Every sampler is seeded, owns its ``random.Random`` and never touches global random state;
``state_dict()`` holds only JSON-able values (ints, floats, strings, lists, dicts), so it
round-trips through ``torch.save`` / ``torch.load(weights_only=True)`` and a resumed sampler
draws exactly the samples the uninterrupted one would have drawn.

Samplers, chosen by name with :func:`make_sampler`:

- ``uniform``: ``space.sample``, every decision independently uniform (subsets uniform over
  subsets, which favours middle sizes).
- ``any-path``: NASRec's "single operator, any connection": like ``uniform``, but every
  subset-of-inputs decision first draws its size uniformly in ``[min, cap]`` (``cap`` = the
  decision's own maximum, lowered to the option ``max_inputs``), then a uniform subset of
  that size.
- ``warmup``: with probability ``p(step) = max(0, 1 - step / warmup_steps)`` the *full path*,
  else the inner sampler's draw. A ranknas subnet runs one op per block, so the full path is
  the largest single path: every width and depth at its maximum, every optional block on,
  every subset of inputs at its maximum size, and for every op decision the op with the most
  parameters in that full context (unlike NASRec's full path, which mixes all ops at once).
- ``balanced``: operator-balanced: every op decision goes to the op of that block trained
  least so far (ties broken by the rng), other decisions are uniform; counts are kept per
  ``(block, op)`` over the *active* op decisions of the returned architectures.

Every returned architecture is canonical and materializes; invalid draws are redrawn at most
``MAX_TRIES`` times, then :class:`~ranknas.errors.SpaceError` is raised.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from ranknas.errors import ConfigError, InvalidArchitecture, SpaceError
from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.choices import Categorical, Choice, Subset, Value
from ranknas.spaces.space import SearchSpace, width_choice_name

__all__ = ["SAMPLERS", "AnyPathSampler", "BalancedSampler", "PathSampler", "UniformSampler",
           "WarmupSampler", "make_sampler"]

MAX_TRIES = 200
WHERE = "supernet.sampler"


def _rng_state(rng: random.Random) -> dict[str, Any]:
    version, internal, gauss = rng.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _set_rng_state(rng: random.Random, state: dict[str, Any]) -> None:
    rng.setstate((int(state["version"]), tuple(int(x) for x in state["internal"]),
                  state["gauss"]))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{WHERE}.{name}", f"must be an integer >= {minimum}, got {value!r}")
    return value


class PathSampler(ABC):
    """Draws the architecture trained at each supernet step.

    Args:
        space: The search space the supernet covers.
        seed: Seeds the sampler's own ``random.Random``.
        schema: Data shape used to check that draws materialize; default: the space's.
    """

    name: ClassVar[str]
    #: Option names :func:`make_sampler` accepts for this sampler.
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, space: SearchSpace, seed: int = 0,
                 schema: DataSchema | None = None) -> None:
        self.space = space
        self.seed = seed
        self.schema = schema
        self.rng = random.Random(seed)

    @abstractmethod
    def sample(self, step: int) -> Architecture:
        """The architecture to train at ``step`` (0-based optimizer step)."""

    def _valid(self, draw: Callable[[int], dict[str, Value]]) -> Architecture:
        """Canonicalize and materialize ``draw(attempt)``, redrawing invalid ones."""
        last: InvalidArchitecture | None = None
        for attempt in range(MAX_TRIES):
            try:
                arch = self.space.canonicalize(draw(attempt))
                self.space.materialize(arch, self.schema)
                return arch
            except InvalidArchitecture as err:
                last = err
        raise SpaceError(self.space.name, f"sampler {self.name!r} found no valid architecture "
                         f"in {MAX_TRIES} draws; last: {last}")

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the name, seed and rng state (subclasses add theirs)."""
        return {"name": self.name, "seed": self.seed, "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the sampler must be of the same kind."""
        if state.get("name") != self.name:
            raise ConfigError(WHERE, f"state is of sampler {state.get('name')!r}, "
                              f"not {self.name!r}")
        self.seed = int(state["seed"])
        _set_rng_state(self.rng, state["rng"])


class UniformSampler(PathSampler):
    """Uniform single path: ``space.sample`` (each decision independently uniform)."""

    name = "uniform"

    def sample(self, step: int) -> Architecture:
        return self._valid(lambda _: {c.name: c.sample(self.rng) for c in self.space.choices()})


class AnyPathSampler(PathSampler):
    """NASRec's single operator with any connections, at most ``max_inputs`` per decision.

    Args:
        max_inputs: Cap on the size of every subset-of-inputs decision (``None``: each
            decision's own maximum). A decision whose minimum exceeds the cap keeps its
            minimum.
    """

    name = "any-path"
    OPTIONS = ("max_inputs",)

    def __init__(self, space: SearchSpace, seed: int = 0, schema: DataSchema | None = None,
                 max_inputs: int | None = None) -> None:
        super().__init__(space, seed, schema)
        self.max_inputs = None if max_inputs is None else _check_int("max_inputs",
                                                                      max_inputs, 1)

    def _subset(self, choice: Subset) -> Value:
        hi = choice.max_size if self.max_inputs is None else min(choice.max_size,
                                                                 self.max_inputs)
        k = self.rng.randint(choice.min_size, max(hi, choice.min_size))
        picked = set(self.rng.sample(range(len(choice.candidates)), k))
        return tuple(c for i, c in enumerate(choice.candidates) if i in picked)

    def _draw(self, choice: Choice) -> Value:
        return self._subset(choice) if isinstance(choice, Subset) else choice.sample(self.rng)

    def sample(self, step: int) -> Architecture:
        return self._valid(lambda _: {c.name: self._draw(c) for c in self.space.choices()})


def _op_decisions(space: SearchSpace) -> dict[str, str]:
    """Decision name -> block id of every op decision."""
    choices = {c.name for c in space.choices()}
    return {f"{b.id}.op": b.id for b in space.graph.blocks() if f"{b.id}.op" in choices}


class WarmupSampler(PathSampler):
    """Full path with probability ``max(0, 1 - step / warmup_steps)``, else the inner sampler.

    Args:
        warmup_steps: Steps over which the full-path probability decays linearly to 0.
        inner: Name of the sampler used otherwise (default ``any-path``); further options
            (``max_inputs``, ...) are passed on to it.
    """

    name = "warmup"
    OPTIONS = ("warmup_steps", "inner")

    def __init__(self, space: SearchSpace, seed: int = 0, schema: DataSchema | None = None,
                 warmup_steps: int = 1000, inner: str = "any-path",
                 **inner_options: Any) -> None:
        super().__init__(space, seed, schema)
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 1)
        if inner == self.name:
            raise ConfigError(f"{WHERE}.inner", "cannot wrap itself; allowed: "
                              + ", ".join(n for n in SAMPLERS if n != self.name))
        # A derived seed: the coin flips and the inner draws are independent streams.
        inner_seed = random.Random(f"warmup-inner-{seed}").getrandbits(62)
        self.inner = make_sampler(inner, space, inner_seed, schema=schema, **inner_options)
        self._full_ops = self._largest_ops()
        self.full_path()  # fail now, not mid-training, when the full path is invalid

    def probability(self, step: int) -> float:
        """``p(step) = max(0, 1 - step / warmup_steps)``."""
        return max(0.0, 1.0 - step / self.warmup_steps)

    def _full_values(self, ops: dict[str, str], rng: random.Random | None) -> dict[str, Value]:
        widths = {width_choice_name(b.id, k) for b in self.space.graph.blocks()
                  for k in range(max(b.depth))}
        fixed = {f"{b.id}.{s}" for b in self.space.graph.blocks() for s in ("on", "depth")}
        values: dict[str, Value] = {}
        for c in self.space.choices():
            if c.name in ops:
                values[c.name] = ops[c.name]
            elif isinstance(c, Subset):
                if rng is None or c.max_size == len(c.candidates):
                    values[c.name] = c.candidates[-c.max_size:] if c.max_size else ()
                else:
                    picked = set(rng.sample(range(len(c.candidates)), c.max_size))
                    values[c.name] = tuple(x for i, x in enumerate(c.candidates) if i in picked)
            elif isinstance(c, Categorical) and (c.name in widths or c.name in fixed):
                values[c.name] = max(c.options)  # widest, deepest, True for on/off
            else:
                values[c.name] = c.options[0] if rng is None else c.sample(rng)
        return values

    def _largest_ops(self) -> dict[str, str]:
        """Per op decision, in graph order, the op with the most parameters in the full path."""
        decisions = _op_decisions(self.space)
        ops = {name: self.space.choice(name).options[0] for name in decisions}
        for name, block in decisions.items():
            best, best_params = ops[name], -1
            for op in self.space.choice(name).options:
                values = self._full_values({**ops, name: op}, None)
                try:
                    graph = self.space.materialize(self.space.canonicalize(values), self.schema)
                except InvalidArchitecture:
                    continue
                params = sum(n.cost.params for n in graph.nodes if n.block == block)
                if params > best_params:
                    best, best_params = op, params
            ops[name] = best
        return ops

    def full_path(self) -> Architecture:
        """The largest single path; inputs beyond a decision's maximum are drawn at random."""
        return self._valid(lambda a: self._full_values(self._full_ops, None if a == 0
                                                       else self.rng))

    def sample(self, step: int) -> Architecture:
        if self.rng.random() < self.probability(step):
            return self.full_path()
        return self.inner.sample(step)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.inner.load_state_dict(state["inner"])


class BalancedSampler(PathSampler):
    """Operator-balanced: each op decision picks its block's least-trained op.

    Counts are per ``(block, op)`` and grow only for op decisions active in the returned
    architecture, so within a block they stay within 1 of each other as long as the
    least-trained ops yield valid architectures (after ``MAX_TRIES // 2`` invalid draws the
    op decisions fall back to uniform).
    """

    name = "balanced"

    def __init__(self, space: SearchSpace, seed: int = 0,
                 schema: DataSchema | None = None) -> None:
        super().__init__(space, seed, schema)
        self.decisions = _op_decisions(space)
        self.counts: dict[str, dict[str, int]] = {
            block: {op: 0 for op in space.choice(name).options}
            for name, block in self.decisions.items()}

    def _pick(self, name: str, uniform: bool) -> str:
        counts = self.counts[self.decisions[name]]
        if uniform:
            options = list(counts)
        else:
            low = min(counts.values())
            options = [op for op, n in counts.items() if n == low]
        return options[self.rng.randrange(len(options))]

    def _draw(self, attempt: int) -> dict[str, Value]:
        uniform = attempt >= MAX_TRIES // 2
        return {c.name: self._pick(c.name, uniform) if c.name in self.decisions
                else c.sample(self.rng) for c in self.space.choices()}

    def sample(self, step: int) -> Architecture:
        arch = self._valid(self._draw)
        for name, block in self.decisions.items():
            op = arch.get(name)
            if op is not None:
                self.counts[block][op] += 1
        return arch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "counts": {b: dict(c) for b, c in self.counts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.counts = {b: {op: int(n) for op, n in c.items()}
                       for b, c in state["counts"].items()}


SAMPLERS: dict[str, type[PathSampler]] = {
    cls.name: cls for cls in (UniformSampler, AnyPathSampler, WarmupSampler, BalancedSampler)}


def make_sampler(name: str, space: SearchSpace, seed: int = 0, *,
                 schema: DataSchema | None = None, **options: Any) -> PathSampler:
    """The sampler called ``name`` (see :data:`SAMPLERS`) with its options.

    ``warmup`` passes options it does not know on to its inner sampler.

    Raises:
        ConfigError: an unknown name or option (``where`` starts with ``supernet.sampler``
            and the message lists what is allowed), or a bad option value.
    """
    cls = SAMPLERS.get(name)
    if cls is None:
        raise ConfigError(WHERE, f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    if cls is not WarmupSampler:
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            allowed = ", ".join(cls.OPTIONS) or "none"
            raise ConfigError(f"{WHERE}.{unknown[0]}", f"unknown option of sampler {name!r}; "
                              f"allowed: {allowed}")
    return cls(space, seed, schema, **options)
