"""NAS strategies behind one ask/tell interface.

Built-in strategies (``random``, ``evolution``, ``optuna``) and third-party ones (entry-point
group ``ranknas.strategies``) are made by name with :func:`make_strategy`; :class:`Dedupe` and
:class:`Constraints` wrap any of them.
"""

from ranknas.strategies.base import Proposal, Strategy
from ranknas.strategies.registry import (
    available_strategies,
    describe_strategies,
    make_strategy,
    register_strategy,
)
from ranknas.strategies.wrappers import Constraints, Dedupe, drain_infeasible

__all__ = [
    "Constraints",
    "Dedupe",
    "Proposal",
    "Strategy",
    "available_strategies",
    "describe_strategies",
    "drain_infeasible",
    "make_strategy",
    "register_strategy",
]
