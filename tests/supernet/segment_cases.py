"""Shared cases of the segmented-execution tests (``test_segmented*.py``): a tiny schema,
a batch of it, a supernet's twin, and a closeness measure."""

from __future__ import annotations

import torch

from ranknas.evaluator.data.schema import DataSchema
from ranknas.supernet import Supernet

SCHEMA = DataSchema(4, (30, 20, 10, 50, 7), "tiny")
B = 8


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """|a - b| <= tol, relative to the scale (nasrec's pairwise products reach ~1e3)."""
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def batch(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(B, SCHEMA.num_dense, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (B,), generator=gen)
                          for c in SCHEMA.cardinalities], dim=1)
    labels = torch.randint(0, 2, (B,), generator=gen).float()
    return dense.to(device), sparse.to(device), labels.to(device)


def twin(supernet: Supernet) -> Supernet:
    twin = Supernet(supernet.space, supernet.schema, seed=0).to(supernet.head_bias.device)
    twin.load_state_dict(supernet.state_dict())
    return twin.train()
