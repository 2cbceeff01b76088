"""Test helpers for ranknas and its plugins.

- :mod:`ranknas.testing.strategies`: the conformance suite every search strategy passes, with a
  tiny toy space and a deterministic toy objective (no training). Plugin authors subclass
  ``StrategyConformance`` in their own tests.
"""

try:  # rich assertion messages in the suite's checks when pytest runs them
    import pytest

    pytest.register_assert_rewrite("ranknas.testing.strategies")
except ImportError:  # pragma: no cover - pytest is a test-only dependency
    pass
