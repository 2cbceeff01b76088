"""One architecture as data for the fixed-shape executions (:mod:`ranknas.supernet.masked`,
:mod:`ranknas.supernet.segmented_step`): its path tensors and the layers it runs.

:meth:`~ranknas.supernet.masked.MaskedProgram.encode` writes them on the host; a path
prefetch worker (:mod:`ranknas.supernet.prefetch`) sends them between processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ranknas.supernet.masked_base import Path

__all__ = ["PathNode", "PathTensors"]


class PathNode(NamedTuple):
    """One layer an architecture runs (what the segmented execution runs).

    Attributes:
        block: Block id.
        op: Op name.
        k: Layer index in the op's stack.
        is_out: The layer's output is the block's output.
        widths: Merged input width of each of the layer's ports (in the order of its
            ``_Layer.ports`` in :mod:`~ranknas.supernet.masked`), in the port's units; its
            bound where the port is a stacked layer's (``#prev``), 0 where the architecture
            leaves the port unconnected.
        width: The node's chosen width (None where the op has none).
        branches: The values of its op's
            :attr:`~ranknas.supernet.masked_base.MaskedOp.branches`.
    """

    block: str
    op: str
    k: int
    is_out: bool
    widths: tuple[int, ...] = ()
    width: int | None = None
    branches: tuple[bool, ...] = ()


@dataclass(frozen=True)
class PathTensors:
    """One architecture as data: fixed-size tensors per space, on the supernet's device.

    Attributes:
        arch_id: The architecture encoded.
        floats: Selectors, flags, width masks and 1/width, key biases ``[Nf]``.
        ints: Gather indices and storage positions ``[Ni]``.
        nodes: The layers the architecture runs, in order.
        head_width: The merged width of the logit head's input (features).
    """

    arch_id: str
    floats: torch.Tensor
    ints: torch.Tensor
    nodes: tuple[PathNode, ...] = ()
    head_width: int = 0

    @property
    def tensors(self) -> Path:
        return self.floats, self.ints
