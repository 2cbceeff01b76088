"""The operator plugin interface: what every catalogue entry declares and builds.

Call order, for one node of a materialized architecture:

1. :meth:`Operator.output_spec` with the node's input specs and width: shape inference, which
   also validates (raises :class:`~ranknas.errors.InvalidArchitecture` on a shape it can't take).
2. :meth:`Operator.cost`: analytic forward FLOPs, parameters and activation bytes per example.
3. :meth:`Operator.build`: the ``nn.Module``; its ``forward`` takes one tensor per *present*
   port, in the order of :attr:`Operator.ports`.

Inputs reach an op already merged per port: several sources of one port are concatenated
(dense along features, sparse along fields) and converted to the port's kind first
(see :func:`ranknas.spaces.ops.base.merged_spec`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from torch import nn

from ranknas.errors import InvalidArchitecture

BYTES_PER_VALUE = 4  # fp32 activations and weights


class Kind(StrEnum):
    """Tensor kinds flowing through a ranking model."""

    DENSE = "dense"  # [B, D]
    SPARSE = "sparse"  # [B, N, E]: N "fields" of E-dim embeddings


@dataclass(frozen=True)
class TensorSpec:
    """Per-example shape of an activation.

    Args:
        kind: Dense ``[B, width]`` or sparse ``[B, width, dim]``.
        width: D for dense tensors, N (fields) for sparse ones.
        dim: E for sparse tensors; 0 for dense ones.
    """

    kind: Kind
    width: int
    dim: int = 0

    @staticmethod
    def dense(width: int) -> TensorSpec:
        return TensorSpec(Kind.DENSE, int(width))

    @staticmethod
    def sparse(fields: int, dim: int) -> TensorSpec:
        return TensorSpec(Kind.SPARSE, int(fields), int(dim))

    @property
    def numel(self) -> int:
        """Values per example."""
        return self.width * self.dim if self.kind is Kind.SPARSE else self.width

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-example shape, without the batch dimension."""
        return (self.width, self.dim) if self.kind is Kind.SPARSE else (self.width,)

    def __str__(self) -> str:
        return f"[B,{self.width},{self.dim}]" if self.kind is Kind.SPARSE else f"[B,{self.width}]"


@dataclass(frozen=True)
class Port:
    """One input slot of an operator.

    Args:
        name: Port name, e.g. ``x``, ``left``, ``sparse``.
        kind: The kind the op reads; sources of the other kind are converted.
        many: Several sources may feed it (concatenated); otherwise exactly one.
        optional: The op works without this port.
    """

    name: str
    kind: Kind
    many: bool = True
    optional: bool = False


@dataclass(frozen=True)
class OpContext:
    """Space-wide settings every op sees.

    Args:
        embedding_dim: E, the width of every sparse field.
        layernorm: Attach LayerNorm where the op family uses it (NASRec's ``use_layernorm``).
        activation: ``relu`` or ``identity``.
    """

    embedding_dim: int = 16
    layernorm: bool = True
    activation: str = "relu"


@dataclass(frozen=True)
class OpCost:
    """Analytic forward cost per example.

    Attributes:
        matmul_flops: FLOPs of matrix products (2 per multiply-add), the part that
            ``torch.utils.flop_counter`` counts.
        flops: All forward FLOPs: ``matmul_flops`` plus element-wise work (bias, norm,
            activation, softmax, ...).
        params: Trainable parameters, exactly ``sum(p.numel())`` of the built module.
        bytes_read: Activation bytes read per example (weights are per batch: ``4 * params``).
        bytes_written: Activation bytes written per example.
    """

    matmul_flops: int
    flops: int
    params: int
    bytes_read: int
    bytes_written: int

    def __add__(self, other: OpCost) -> OpCost:
        return OpCost(self.matmul_flops + other.matmul_flops, self.flops + other.flops,
                      self.params + other.params, self.bytes_read + other.bytes_read,
                      self.bytes_written + other.bytes_written)


ZERO_COST = OpCost(0, 0, 0, 0, 0)


class Operator(ABC):
    """A recommender operator of the catalogue.

    Subclasses set the class attributes and implement the three methods. ``inputs`` always maps
    each *present* port name to its merged :class:`TensorSpec`.
    """

    name: ClassVar[str]
    ports: ClassVar[tuple[Port, ...]]
    out_kind: ClassVar[Kind]
    #: ``required``: the node must choose a width; ``optional``: None has a meaning
    #: (documented per op); ``none``: the op ignores width, so width choices are inactive.
    width_mode: ClassVar[str] = "required"
    #: Several of these can be stacked (``depth``): one port, output kind equals input kind.
    stackable: ClassVar[bool] = False

    @abstractmethod
    def output_spec(self, inputs: Mapping[str, TensorSpec], width: int | None,
                    ctx: OpContext) -> TensorSpec:
        """Shape inference; raise InvalidArchitecture for inputs the op can't take."""

    @abstractmethod
    def cost(self, inputs: Mapping[str, TensorSpec], width: int | None,
             ctx: OpContext) -> OpCost:
        """Analytic forward FLOPs, params and activation bytes per example."""

    @abstractmethod
    def build(self, inputs: Mapping[str, TensorSpec], width: int | None,
              ctx: OpContext) -> nn.Module:
        """The module; ``forward(*tensors)`` gets one tensor per present port, in port order."""

    # -- helpers shared by subclasses -----------------------------------------------------
    def port(self, name: str) -> Port:
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(name)

    def check_width(self, width: int | None) -> None:
        if self.width_mode == "required" and width is None:
            raise InvalidArchitecture(self.name, "this operator needs a width")
        if width is not None and width < 1:
            raise InvalidArchitecture(self.name, f"width must be >= 1, got {width}")


def merged_spec(kind: Kind, sources: Sequence[TensorSpec], embedding_dim: int) -> TensorSpec:
    """Spec of several sources merged into one port of ``kind``.

    Dense ports flatten sparse sources (``[B, N, E] -> [B, N*E]``) and concatenate features;
    sparse ports zero-pad dense sources to a multiple of E and view them as fields
    (``[B, D] -> [B, ceil(D/E), E]``), then concatenate fields.
    """
    if not sources:
        raise InvalidArchitecture("inputs", "a port needs at least one source")
    if kind is Kind.DENSE:
        return TensorSpec.dense(sum(s.numel for s in sources))
    fields = 0
    for s in sources:
        fields += s.width if s.kind is Kind.SPARSE else math.ceil(s.width / embedding_dim)
    return TensorSpec.sparse(fields, embedding_dim)


def layer_norm_cost(width: int, rows: int = 1) -> tuple[int, int]:
    """(flops, params) of a LayerNorm over ``width`` features applied to ``rows`` vectors."""
    return 8 * width * rows, 2 * width


def activation_flops(name: str, numel: int) -> int:
    return 0 if name == "identity" else numel


def make_activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "identity":
        return nn.Identity()
    raise InvalidArchitecture("activation", f"unknown activation {name!r} (known: relu, identity)")
