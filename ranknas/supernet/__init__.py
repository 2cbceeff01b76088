"""The shared-weight supernet: widest weights per (block, op, layer), sliced per architecture.

Importing this package registers one elastic counterpart for every catalogue operator.
"""

from __future__ import annotations

from ranknas.supernet import (  # noqa: F401 - registers the elastic ops
    elastic_dense,
    elastic_interaction,
    elastic_merge,
    elastic_sparse,
)
from ranknas.supernet.elastic_base import (
    ELASTIC_OPS,
    ElasticOp,
    ElasticSpec,
    PortCols,
    SourceLayout,
    elastic_class,
    register_elastic,
)
from ranknas.supernet.layout import SpaceLayout, module_key
from ranknas.supernet.supernet import Supernet, SupernetPlan

__all__ = [
    "ELASTIC_OPS",
    "ElasticOp",
    "ElasticSpec",
    "PortCols",
    "SourceLayout",
    "SpaceLayout",
    "Supernet",
    "SupernetPlan",
    "elastic_class",
    "module_key",
    "register_elastic",
]
