"""In-memory CTR data split into train/validation/test, fed by slicing whole tensors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ranknas.errors import DataError
from ranknas.evaluator.data.schema import Batch, DataSchema


@dataclass(frozen=True)
class CTRData:
    """A dataset held as three pre-tensorized splits.

    Each split is a :class:`Batch` holding every example of that split, so feeding a model is
    tensor slicing with no per-example Python.

    Args:
        schema: Dense count and sparse cardinalities.
        train: All training examples.
        valid: All validation examples (search scores NE on these).
        test: All test examples (held out for final reporting).
    """

    schema: DataSchema
    train: Batch
    valid: Batch
    test: Batch

    def __post_init__(self) -> None:
        # checked once here: the training steps gather embedding rows without bounds checks
        cards = torch.tensor(self.schema.cardinalities)
        for name in ("train", "valid", "test"):
            sparse = getattr(self, name).sparse
            if sparse.dim() != 2 or sparse.shape[1] != self.schema.num_sparse:
                raise DataError(f"{name}.sparse", f"must be [N, {self.schema.num_sparse}] "
                                f"(one id per sparse field), got {tuple(sparse.shape)}")
            if not len(sparse):
                continue
            low, high = sparse.amin(0).cpu(), sparse.amax(0).cpu()
            bad = ((low < 0) | (high >= cards)).nonzero().flatten().tolist()
            if bad:
                f = bad[0]
                raise DataError(f"{name}.sparse[:, {f}]", f"ids must lie in [0, "
                                f"{self.schema.cardinalities[f]}) (the field's cardinality), got "
                                f"{int(low[f])}..{int(high[f])}; hash or remap the ids, or raise "
                                f"the cardinality")

    def split(self, name: str) -> Batch:
        if name not in ("train", "valid", "test"):
            raise DataError("split", f"unknown split {name!r} (known: train, valid, test)")
        return getattr(self, name)

    def to(self, device: torch.device | str) -> CTRData:
        return CTRData(self.schema, self.train.to(device), self.valid.to(device),
                       self.test.to(device))

    @property
    def background_ctr(self) -> float:
        """Observed click rate of the training labels: the NE normaliser."""
        return float(self.train.labels.float().mean())


def iter_batches(data: Batch, batch_size: int, *, shuffle: bool = False,
                 generator: torch.Generator | None = None,
                 drop_last: bool = False) -> Iterator[Batch]:
    """Yield mini-batches of ``data`` by slicing (or gathering, when shuffled).

    Args:
        data: A whole split, ``dense [N, D]``, ``sparse [N, F]``, ``labels [N]``.
        batch_size: B, examples per batch.
        shuffle: Draw a fresh permutation from ``generator`` first.
        generator: Seeded generator used for the permutation (required when shuffling).
        drop_last: Skip a final batch smaller than ``batch_size``.
    """
    if batch_size < 1:
        raise DataError("batch_size", f"must be >= 1, got {batch_size}")
    n = len(data)
    if shuffle:
        if generator is None:
            raise DataError("generator", "shuffling needs a seeded torch.Generator")
        order = torch.randperm(n, generator=generator, device=generator.device)
        order = order.to(data.labels.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if drop_last and stop - start < batch_size:
            return
        if shuffle:
            idx = order[start:stop]
            yield Batch(data.dense[idx], data.sparse[idx], data.labels[idx])
        else:
            yield Batch(data.dense[start:stop], data.sparse[start:stop], data.labels[start:stop])
