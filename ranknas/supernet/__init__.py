"""The shared-weight supernet (widest weights sliced per architecture; fixed-shape masked and
segmented executions of it), path samplers, trainer.

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
from ranknas.supernet.masked import MaskedSupernet, masked_forward
from ranknas.supernet.masked_path import PathTensors
from ranknas.supernet.masked_step import MaskedStep
from ranknas.supernet.samplers import (
    SAMPLERS,
    AnyPathSampler,
    BalancedSampler,
    PathSampler,
    UniformSampler,
    WarmupSampler,
    make_sampler,
)
from ranknas.supernet.segmented import SegmentedProgram, segmented_forward
from ranknas.supernet.supernet import Supernet, SupernetPlan
from ranknas.supernet.trainer import SupernetTrainConfig, SupernetTrainer

__all__ = [
    "ELASTIC_OPS",
    "SAMPLERS",
    "AnyPathSampler",
    "BalancedSampler",
    "ElasticOp",
    "ElasticSpec",
    "MaskedStep",
    "MaskedSupernet",
    "PathSampler",
    "PathTensors",
    "PortCols",
    "SegmentedProgram",
    "SourceLayout",
    "SpaceLayout",
    "Supernet",
    "SupernetPlan",
    "SupernetTrainConfig",
    "SupernetTrainer",
    "UniformSampler",
    "WarmupSampler",
    "elastic_class",
    "make_sampler",
    "masked_forward",
    "module_key",
    "register_elastic",
    "segmented_forward",
]
