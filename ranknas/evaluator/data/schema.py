"""The batch type and dataset schema every model and data source agrees on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ranknas.errors import DataError


@dataclass(frozen=True)
class DataSchema:
    """Shape of a CTR dataset: what a model needs to know to be built.

    Args:
        num_dense: Number of dense (continuous) features per example.
        cardinalities: Rows of the embedding table of each sparse field, in field order.
        name: A short name for reports (``synthetic``, ``criteo``, ...).
    """

    num_dense: int
    cardinalities: tuple[int, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.num_dense < 0:
            raise DataError("num_dense", f"must be >= 0, got {self.num_dense}")
        if not self.cardinalities:
            raise DataError("cardinalities", "need at least one sparse field")
        bad = [i for i, c in enumerate(self.cardinalities) if int(c) < 1]
        if bad:
            raise DataError(f"cardinalities[{bad[0]}]", "every sparse field needs >= 1 row")
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in self.cardinalities))

    @property
    def num_sparse(self) -> int:
        """F, the number of sparse fields."""
        return len(self.cardinalities)

    @property
    def total_rows(self) -> int:
        """Rows of the one fused embedding table."""
        return sum(self.cardinalities)

    def to_json(self) -> dict:
        return {"name": self.name, "num_dense": self.num_dense,
                "cardinalities": list(self.cardinalities)}

    @classmethod
    def from_json(cls, obj: dict) -> DataSchema:
        return cls(int(obj["num_dense"]), tuple(obj["cardinalities"]), obj.get("name", "custom"))


@dataclass(frozen=True)
class Batch:
    """One mini-batch of CTR examples.

    Attributes:
        dense: ``[B, num_dense]`` float32 dense features (already normalised).
        sparse: ``[B, F]`` int64 ids, one per field, each in ``[0, cardinality)``.
        labels: ``[B]`` float32 click labels in {0, 1}.
    """

    dense: torch.Tensor
    sparse: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(self.dense.to(device, non_blocking=non_blocking),
                     self.sparse.to(device, non_blocking=non_blocking),
                     self.labels.to(device, non_blocking=non_blocking))
