"""Objectives and evaluation results: plain values that strategies, trackers and reports share.

They live below ``strategies/`` so that reports and tracking read results without importing
any strategy. Results are JSON round-trippable; no tensors inside.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from ranknas.errors import ConfigError


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"  # diverged, out of memory, crashed: the reason says which
    INFEASIBLE = "infeasible"  # violated a constraint before training
    PRUNED = "pruned"  # stopped early by a strategy


#: Objectives ranknas can compute: name -> (default direction, computable without training).
KNOWN_OBJECTIVES: Mapping[str, tuple[str, bool]] = MappingProxyType({
    "ne": ("minimize", False),
    "logloss": ("minimize", False),
    "auc": ("maximize", False),
    "flops": ("minimize", True),
    "params": ("minimize", True),
    "dense_params": ("minimize", True),
})


@dataclass(frozen=True)
class Objective:
    """One thing to optimise.

    Args:
        name: A metric name, e.g. ``ne`` or ``flops`` (see :data:`KNOWN_OBJECTIVES`).
        direction: ``minimize`` or ``maximize``.
        cheap: Known without training (from the materialized graph).
    """

    name: str
    direction: str = "minimize"
    cheap: bool = False

    def __post_init__(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise ConfigError(f"objectives.{self.name}.direction",
                              f"expected minimize or maximize, got {self.direction!r}")

    @classmethod
    def named(cls, name: str, direction: str | None = None) -> Objective:
        """A known objective with its default direction unless one is given."""
        if name not in KNOWN_OBJECTIVES:
            raise ConfigError("objectives.name", f"unknown objective {name!r} (known: "
                              f"{', '.join(KNOWN_OBJECTIVES)})")
        default, cheap = KNOWN_OBJECTIVES[name]
        return cls(name, direction or default, cheap)

    def sign(self) -> float:
        """+1 to minimise as is, -1 to flip a maximised metric into a minimised one."""
        return 1.0 if self.direction == "minimize" else -1.0


@dataclass(frozen=True)
class EvalResult:
    """What evaluating one architecture produced.

    Args:
        arch_id: The architecture's id.
        status: ok, failed, infeasible or pruned.
        metrics: name -> value (ne, logloss, auc, flops, params, ...).
        examples: Training examples processed (the budget unit).
        seconds: Wall time spent.
        reason: Why it failed, was infeasible or pruned.
    """

    arch_id: str
    status: Status
    metrics: Mapping[str, float] = field(default_factory=dict)
    examples: int = 0
    seconds: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "metrics", MappingProxyType(
            {k: float(v) for k, v in dict(self.metrics).items()}))

    def __reduce__(self) -> tuple[Any, ...]:
        # A MappingProxyType does not pickle; results cross process boundaries as their JSON.
        return (EvalResult.from_json, (self.to_json(),))

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def values(self, objectives: Sequence[Objective]) -> tuple[float, ...] | None:
        """Objective values in order, or None unless ok with every value finite."""
        if not self.ok:
            return None
        try:
            vals = tuple(self.metrics[o.name] for o in objectives)
        except KeyError:
            return None
        return vals if all(math.isfinite(v) for v in vals) else None

    def to_json(self) -> dict[str, Any]:
        return {"arch_id": self.arch_id, "status": self.status.value,
                "metrics": dict(self.metrics), "examples": self.examples,
                "seconds": self.seconds, "reason": self.reason}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> EvalResult:
        return cls(obj["arch_id"], Status(obj["status"]), obj.get("metrics", {}),
                   int(obj.get("examples", 0)), float(obj.get("seconds", 0.0)),
                   obj.get("reason", ""))
