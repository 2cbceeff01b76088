from __future__ import annotations

import pytest
import torch

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import load_space
from ranknas.spaces.yaml_space import space_from_dict
from ranknas.supernet import Supernet

#: rankitect's sparse layers (512 fields) and dcn chains would make a huge supernet; a small
#: cap keeps the test light and exercises the wrap-around of over-wide inputs.
MAX_SLOT = {"rankitect": 256}
BATCH = 4


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every supernet test runs on one thread (the root conftest's ``one_thread``)."""


#: A two-block space small enough to train in tests (trainer, path prefetch).
TRAIN_SPACE = {
    "name": "tiny_train",
    "inputs": {"dense": 13, "sparse": 26, "embedding_dim": 8},
    "blocks": [
        {"id": "b1", "ops": ["linear-2d", "dot-product"], "width": [16, 32],
         "inputs": {"from": ["dense", "sparse"], "max": 2}},
        {"id": "b2", "ops": ["linear-2d", "sigmoid-gating", "sum"], "width": [16, 32],
         "inputs": {"from": "any-earlier", "max": 2}},
    ],
    "output": {"from": "last"},
}


@pytest.fixture(scope="session")
def train_space():
    return space_from_dict(TRAIN_SPACE)


@pytest.fixture(scope="session")
def tiny_schema() -> DataSchema:
    return DataSchema(13, (7, 50, 3, 20, 11, 9, 40, 5) + (6,) * 18, name="tiny")


@pytest.fixture(scope="session")
def batch(tiny_schema) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(BATCH, tiny_schema.num_dense, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (BATCH,), generator=gen)
                          for c in tiny_schema.cardinalities], dim=1)
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0])
    return dense, sparse, labels


@pytest.fixture(scope="module")
def shared_supernet(tiny_schema):
    """A read-only supernet per space, built once per test module (do not train it)."""
    built: dict[str, Supernet] = {}

    def get(name: str) -> Supernet:
        if name not in built:
            built[name] = Supernet(load_space(name), tiny_schema, seed=0,
                                   max_slot=MAX_SLOT.get(name, 2048)).eval()
        return built[name]

    yield get
    built.clear()
