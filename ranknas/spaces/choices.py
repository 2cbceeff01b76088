"""Decision types of a search space: frozen, JSON-able, each knowing its Optuna distribution."""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from ranknas.errors import InvalidArchitecture

Value = Any  # str | int | bool | tuple[str, ...]


class Choice(ABC):
    """One named decision. Values are plain JSON scalars or tuples of them."""

    name: str

    @abstractmethod
    def sample(self, rng: random.Random) -> Value:
        """A uniformly random value."""

    @abstractmethod
    def contains(self, value: Value) -> bool:
        """Whether ``value`` is a legal (canonical) value of this choice."""

    @abstractmethod
    def canonical(self, value: Value) -> Value:
        """Normalise a JSON-decoded value (lists to sorted tuples, ...) or raise."""

    @abstractmethod
    def size(self) -> int:
        """Number of distinct values."""

    @abstractmethod
    def neighbours(self, value: Value) -> list[Value]:
        """Values one mutation step away from ``value``."""

    @abstractmethod
    def describe(self) -> str:
        """What is allowed, for error messages."""

    @abstractmethod
    def to_json(self) -> dict:
        """A JSON-able description."""

    def optuna_distribution(self) -> Any:
        """A ``CategoricalDistribution`` over this choice's values encoded as strings/ints."""
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution([self.encode(v) for v in self.values()])

    def values(self) -> list[Value]:
        raise NotImplementedError(f"{type(self).__name__} is too large to enumerate")

    def encode(self, value: Value) -> Any:
        """Value as an Optuna-friendly scalar (tuples become ``a+b`` strings)."""
        return value

    def decode(self, raw: Any) -> Value:
        return raw

    def check(self, value: Value) -> Value:
        """Canonicalise and validate; the error names the choice and lists its values."""
        try:
            value = self.canonical(value)
        except (TypeError, ValueError):
            value = None
        if value is None or not self.contains(value):
            raise InvalidArchitecture(self.name, f"got {value!r}; allowed: {self.describe()}")
        return value


@dataclass(frozen=True)
class Categorical(Choice):
    """Pick one of ``options`` (ints, strings or bools)."""

    name: str
    options: tuple[Value, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise InvalidArchitecture(self.name, "a categorical choice needs at least one option")
        if len(set(self.options)) != len(self.options):
            raise InvalidArchitecture(self.name, f"duplicate options in {list(self.options)}")

    def sample(self, rng: random.Random) -> Value:
        return self.options[rng.randrange(len(self.options))]

    def contains(self, value: Value) -> bool:
        # bool is an int subclass: keep True from passing as 1 and back.
        return any(value == o and type(value) is type(o) for o in self.options)

    def canonical(self, value: Value) -> Value:
        return value

    def size(self) -> int:
        return len(self.options)

    def neighbours(self, value: Value) -> list[Value]:
        return [o for o in self.options if o != value or type(o) is not type(value)]

    def values(self) -> list[Value]:
        return list(self.options)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def to_json(self) -> dict:
        return {"type": "categorical", "name": self.name, "options": list(self.options)}


@dataclass(frozen=True)
class Subset(Choice):
    """Pick between ``min_size`` and ``max_size`` distinct ``candidates``.

    A value is a tuple kept in candidate order, so that the same set always has one spelling.
    """

    name: str
    candidates: tuple[str, ...]
    min_size: int = 1
    max_size: int | None = None

    def __post_init__(self) -> None:
        hi = len(self.candidates) if self.max_size is None else self.max_size
        object.__setattr__(self, "max_size", min(hi, len(self.candidates)))
        if not self.candidates:
            raise InvalidArchitecture(self.name, "a subset choice needs candidates")
        if not 0 <= self.min_size <= self.max_size:
            raise InvalidArchitecture(
                self.name, f"need 0 <= min ({self.min_size}) <= max ({self.max_size})")

    def _sizes(self) -> range:
        return range(self.min_size, self.max_size + 1)

    def sample(self, rng: random.Random) -> Value:
        # Uniform over subsets, not over sizes: weight each size by its subset count.
        weights = [math.comb(len(self.candidates), k) for k in self._sizes()]
        k = rng.choices(list(self._sizes()), weights=weights)[0]
        picked = set(rng.sample(range(len(self.candidates)), k))
        return tuple(c for i, c in enumerate(self.candidates) if i in picked)

    def contains(self, value: Value) -> bool:
        return (isinstance(value, tuple) and self.min_size <= len(value) <= self.max_size
                and len(set(value)) == len(value) and all(v in self.candidates for v in value))

    def canonical(self, value: Value) -> Value:
        if isinstance(value, str) or not hasattr(value, "__iter__"):
            raise TypeError("subset values are lists")
        chosen = list(value)
        if len(set(chosen)) != len(chosen):
            raise ValueError("duplicates")
        order = {c: i for i, c in enumerate(self.candidates)}
        if any(v not in order for v in chosen):
            raise ValueError("unknown candidate")
        return tuple(sorted(chosen, key=order.__getitem__))

    def size(self) -> int:
        return sum(math.comb(len(self.candidates), k) for k in self._sizes())

    def neighbours(self, value: Value) -> list[Value]:
        out: list[Value] = []
        chosen = set(value)
        for c in self.candidates:  # add, drop or swap one candidate
            if c in chosen and len(value) > self.min_size:
                out.append(self.canonical(chosen - {c}))
            if c not in chosen and len(value) < self.max_size:
                out.append(self.canonical(chosen | {c}))
            if c not in chosen:
                out.extend(self.canonical((chosen - {d}) | {c}) for d in value)
        return out

    def values(self) -> list[Value]:
        return [tuple(s) for k in self._sizes() for s in combinations(self.candidates, k)]

    def encode(self, value: Value) -> Any:
        return "+".join(value) if value else "-"

    def decode(self, raw: Any) -> Value:
        return () if raw == "-" else tuple(raw.split("+"))

    def describe(self) -> str:
        return (f"{self.min_size} to {self.max_size} distinct of "
                + ", ".join(repr(c) for c in self.candidates))

    def to_json(self) -> dict:
        return {"type": "subset", "name": self.name, "candidates": list(self.candidates),
                "min": self.min_size, "max": self.max_size}
