"""The operator catalogue: every op a search space can choose, by name."""

from __future__ import annotations

from ranknas.errors import SpaceError
from ranknas.spaces.ops.base import (
    Kind,
    OpContext,
    OpCost,
    Operator,
    Port,
    TensorSpec,
    merged_spec,
)
from ranknas.spaces.ops.dense import DcnCross, Linear2d, SigmoidGating, Sum
from ranknas.spaces.ops.interaction import DotProduct, FactorizationMachine
from ranknas.spaces.ops.merge import Add, Concat, Concat3d, DenseToSparse
from ranknas.spaces.ops.sparse import Linear3d, Transformer

_CATALOGUE: dict[str, Operator] = {}


def register_operator(op: Operator) -> Operator:
    """Add an operator instance to the catalogue under ``op.name``."""
    if op.name in _CATALOGUE:
        raise SpaceError("operators", f"operator {op.name!r} is already registered")
    _CATALOGUE[op.name] = op
    return op


def get_operator(name: str, where: str = "op") -> Operator:
    """Look an operator up by name; the error lists every known name."""
    try:
        return _CATALOGUE[name]
    except KeyError:
        known = ", ".join(sorted(_CATALOGUE))
        raise SpaceError(where, f"unknown operator {name!r} (known: {known})") from None


def operator_names() -> list[str]:
    return sorted(_CATALOGUE)


for _op in (Linear2d(), DcnCross(), SigmoidGating(), Sum(), DotProduct(), FactorizationMachine(),
            Linear3d(), Transformer(), Concat(), Concat3d(), Add(), DenseToSparse()):
    register_operator(_op)

__all__ = [
    "Kind",
    "OpContext",
    "OpCost",
    "Operator",
    "Port",
    "TensorSpec",
    "get_operator",
    "merged_spec",
    "operator_names",
    "register_operator",
]
