"""ranknas: neural-architecture-search benchmarking for recommender ranking (CTR) models."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ranknas.spaces.model import RankingModel

__version__ = "0.1.0"


def load(path: str | os.PathLike[str]) -> RankingModel:
    """Rebuild an exported model folder (``EXPORT/<arch_id>``) without pickle.

    See :func:`ranknas.reports.loading.load`; imported lazily so ``import ranknas`` stays light.
    """
    from ranknas.reports.loading import load as _load

    return _load(path)
