"""NAS strategies behind one ask/tell interface."""

from ranknas.strategies.base import Proposal, Strategy

__all__ = ["Proposal", "Strategy"]
