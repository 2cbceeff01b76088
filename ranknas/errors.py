"""Exceptions shared across ranknas.

Every validation error carries a ``where`` (the field, YAML path or file:line at fault) so that
messages name the culprit and the fix, not a frame deep inside the library.
"""

from __future__ import annotations


class RanknasError(Exception):
    """Base class of every error ranknas raises on purpose."""


class ConfigError(RanknasError, ValueError):
    """Bad user input: a YAML/JSON field, a CLI argument, a data file.

    Args:
        where: The field or path at fault, e.g. ``blocks[2].ops[1]`` or ``train.csv:17``.
        message: What is wrong and how to fix it.
    """

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self) -> tuple:  # picklable: errors raised in pool workers reach the driver
        return type(self), (self.where, self.message)


class SpaceError(ConfigError):
    """A search-space definition is malformed (unknown op, cycle, dangling input, ...)."""


class InvalidArchitecture(ConfigError):
    """An architecture does not belong to its space (bad decision, wrong shape, ...)."""


class DataError(ConfigError):
    """A data file or dataset option is malformed."""


class TrainingDiverged(RanknasError):
    """Training produced a non-finite loss.

    Args:
        step: The optimizer step at which the loss stopped being finite.
        reason: A human-readable reason, e.g. ``"loss is nan"``.
    """

    def __init__(self, step: int, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"training diverged at step {step}: {reason}")

    def __reduce__(self) -> tuple:
        return type(self), (self.step, self.reason)
