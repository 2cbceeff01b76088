"""CTRData checks its sparse ids once, where they are made: the training steps gather
embedding rows without bounds checks on the device."""

from __future__ import annotations

import pytest
import torch

from ranknas.errors import DataError
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.schema import Batch, DataSchema

SCHEMA = DataSchema(2, (5, 3))


def _batch(sparse: torch.Tensor) -> Batch:
    n = sparse.shape[0]
    return Batch(torch.zeros(n, 2), sparse, torch.zeros(n))


def _data(**splits: torch.Tensor) -> CTRData:
    good = _batch(torch.tensor([[0, 0], [4, 2]]))
    return CTRData(SCHEMA, *(_batch(splits[k]) if k in splits else good
                             for k in ("train", "valid", "test")))


def test_ids_in_range_pass():
    data = _data(valid=torch.zeros(0, 2, dtype=torch.long))  # an empty split is fine
    assert len(data.train) == 2


@pytest.mark.parametrize(("split", "sparse", "field"), [
    ("train", torch.tensor([[0, 3]]), "train.sparse[:, 1]"),
    ("test", torch.tensor([[-1, 0]]), "test.sparse[:, 0]"),
    ("valid", torch.tensor([[5, 0]]), "valid.sparse[:, 0]"),
])
def test_id_out_of_range_names_split_field_and_fix(split, sparse, field):
    with pytest.raises(DataError, match=r"cardinality") as err:
        _data(**{split: sparse})
    assert field in str(err.value) and "remap" in str(err.value)


def test_wrong_field_count():
    with pytest.raises(DataError, match=r"train\.sparse.*\[N, 2\]"):
        _data(train=torch.zeros(3, 1, dtype=torch.long))
