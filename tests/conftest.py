"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from ranknas.execution.standalone import torch_threads


@pytest.fixture
def one_thread():
    """One intra-op thread (bit-stable reductions, and fast for models this small)."""
    with torch_threads(1):
        yield
