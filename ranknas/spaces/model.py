"""Standalone PyTorch ranking models built from a materialized architecture."""

from __future__ import annotations

import math

import torch
from torch import nn

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.materialized import MaterializedGraph
from ranknas.spaces.ops import Kind, get_operator
from ranknas.spaces.space import SearchSpace


class FusedEmbedding(nn.Module):
    """All sparse fields in one table: one lookup per batch, sparse row gradients.

    Field ``f``'s ids live at rows ``offsets[f] + id``, so a ``[B, F]`` id tensor becomes a
    ``[B, F, E]`` tensor in a single gather, and the backward pass touches only those rows.

    Args:
        cardinalities: Rows per field.
        dim: E, the embedding width.
        sparse: Produce ``torch.sparse`` gradients (for Adagrad / SparseAdam).
    """

    def __init__(self, cardinalities: tuple[int, ...], dim: int, sparse: bool = True) -> None:
        super().__init__()
        self.table = nn.Embedding(sum(cardinalities), dim, sparse=sparse)
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        nn.init.uniform_(self.table.weight, -1 / math.sqrt(dim), 1 / math.sqrt(dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` ids -> ``[B, F, E]`` embeddings."""
        return self.table(ids + self.offsets)


def _as_kind(x: torch.Tensor, kind: Kind, dim: int) -> torch.Tensor:
    """Convert an activation for a port: flatten sparse for dense ports; zero-pad and fold
    dense into E-wide fields for sparse ports."""
    if kind is Kind.DENSE:
        return x.flatten(1) if x.dim() == 3 else x
    if x.dim() == 3:
        return x
    pad = (-x.shape[1]) % dim
    if pad:
        x = nn.functional.pad(x, (0, pad))
    return x.view(x.shape[0], -1, dim)


class RankingModel(nn.Module):
    """A CTR model: fused embeddings, the architecture's op DAG, and a linear logit head.

    ``forward(dense [B, D], sparse [B, F]) -> logits [B]``. The execution plan is fixed at
    build time (plain lists of slot indices), so the forward pass does no graph work.
    """

    def __init__(self, graph: MaterializedGraph) -> None:
        super().__init__()
        ctx = graph.context
        self.embedding_dim = ctx.embedding_dim
        self.embedding = FusedEmbedding(graph.schema.cardinalities, ctx.embedding_dim)
        slots = {"dense": 0, "sparse": 1}
        self.ops = nn.ModuleList()
        plan: list[list[tuple[list[int], Kind]]] = []
        for node in graph.nodes:
            op = get_operator(node.op)
            self.ops.append(op.build(dict(node.in_specs), node.width, ctx))
            plan.append([([slots[s] for s in sources], op.port(port).kind)
                         for port, sources in node.ports])
            slots[node.key] = len(slots)
        self._plan = plan
        self._output = [slots[s] for s in graph.output_sources]
        self.head = nn.Linear(graph.head_in, 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` from dense features ``[B, D]`` and sparse ids ``[B, F]``."""
        values = [dense, self.embedding(sparse)]
        dim = self.embedding_dim
        for module, ports in zip(self.ops, self._plan, strict=True):
            args = []
            for sources, kind in ports:
                parts = [_as_kind(values[i], kind, dim) for i in sources]
                args.append(parts[0] if len(parts) == 1 else
                            torch.cat(parts, dim=1))
            values.append(module(*args))
        feats = [values[i].flatten(1) for i in self._output]
        return self.head(feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)).squeeze(-1)

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the embedding table."""
        table = self.embedding.table.weight
        return [p for p in self.parameters() if p is not table]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.embedding.table.weight]


def build_model(space: SearchSpace, arch: Architecture, schema: DataSchema | None = None,
                seed: int = 0) -> RankingModel:
    """A freshly initialised standalone model of ``arch``, trainable from scratch.

    Args:
        space: The space ``arch`` belongs to.
        arch: The architecture.
        schema: Data shape (dense count, cardinalities); default: the space's.
        seed: Seeds parameter initialisation without touching global random state.
    """
    graph = space.materialize(arch, schema)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RankingModel(graph)
