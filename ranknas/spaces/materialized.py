"""The concrete DAG of one architecture: ops, shapes and analytic costs.

Model building, FLOPs, parameter counts and hardware cost all read this one structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces.ops import OpContext, OpCost, TensorSpec
from ranknas.spaces.ops.base import BYTES_PER_VALUE


@dataclass(frozen=True)
class MaterializedNode:
    """One op instance.

    Attributes:
        key: Unique key; a block's last layer carries the block id, earlier stacked layers
            ``<id>#<k>``.
        block: The block it comes from.
        op: Operator name.
        width: Resolved width (None where the op's default applies).
        ports: ``(port, source keys)`` for each present port, in the op's port order.
        in_specs: ``(port, merged input spec)``, same order.
        out: Output spec.
        cost: Analytic forward cost per example.
    """

    key: str
    block: str
    op: str
    width: int | None
    ports: tuple[tuple[str, tuple[str, ...]], ...]
    in_specs: tuple[tuple[str, TensorSpec], ...]
    out: TensorSpec
    cost: OpCost


@dataclass(frozen=True)
class MaterializedGraph:
    """A concrete ranking model: embeddings, op nodes in execution order, and the logit head.

    Attributes:
        space: Space name.
        arch_id: Id of the architecture it realises.
        schema: Data schema it was shaped for.
        context: Space-wide op settings.
        nodes: Op nodes in execution (topological) order.
        output_sources: Keys whose flattened outputs are concatenated into the head.
        head_in: Input width of the final ``Linear(head_in, 1)``.
    """

    space: str
    arch_id: str
    schema: DataSchema
    context: OpContext
    nodes: tuple[MaterializedNode, ...]
    output_sources: tuple[str, ...]
    head_in: int

    @property
    def input_specs(self) -> dict[str, TensorSpec]:
        e = self.context.embedding_dim
        return {"dense": TensorSpec.dense(self.schema.num_dense),
                "sparse": TensorSpec.sparse(self.schema.num_sparse, e)}

    def spec(self, key: str) -> TensorSpec:
        specs = self.input_specs
        if key in specs:
            return specs[key]
        return next(n.out for n in self.nodes if n.key == key)

    @property
    def embedding_cost(self) -> OpCost:
        """Lookup of F rows of E values: no FLOPs, all bytes."""
        e, f = self.context.embedding_dim, self.schema.num_sparse
        return OpCost(0, 0, self.schema.total_rows * e, BYTES_PER_VALUE * f * e,
                      BYTES_PER_VALUE * f * e)

    @property
    def head_cost(self) -> OpCost:
        return OpCost(2 * self.head_in, 2 * self.head_in + 1, self.head_in + 1,
                      BYTES_PER_VALUE * self.head_in, BYTES_PER_VALUE)

    @property
    def cost(self) -> OpCost:
        """Whole-model forward cost per example (embedding and head included)."""
        total = self.embedding_cost + self.head_cost
        for node in self.nodes:
            total = total + node.cost
        return total

    @property
    def flops(self) -> int:
        """Forward FLOPs per example (2 per multiply-add, element-wise work included)."""
        return self.cost.flops

    @property
    def params(self) -> int:
        """Trainable parameters, embedding table included; equals ``sum(p.numel())``."""
        return self.cost.params

    @property
    def dense_params(self) -> int:
        """Parameters outside the embedding table."""
        return self.params - self.embedding_cost.params

    def to_networkx(self) -> nx.DiGraph:
        """The DAG with ``op``, ``width``, ``out`` and ``flops`` node attributes."""
        g = nx.DiGraph()
        for key, spec in self.input_specs.items():
            g.add_node(key, op="input", out=str(spec), flops=0)
        for node in self.nodes:
            g.add_node(node.key, op=node.op, width=node.width, out=str(node.out),
                       flops=node.cost.flops)
            for port, sources in node.ports:
                for src in sources:
                    g.add_edge(src, node.key, port=port)
        g.add_node("output", op="head", out="[B,1]", flops=self.head_cost.flops)
        for src in self.output_sources:
            g.add_edge(src, "output")
        return g

    def summary(self) -> str:
        """One line per node: key, op, width, input and output shapes, MFLOPs."""
        lines = [f"{'node':<18}{'op':<16}{'width':>6}  {'in':<28}{'out':<14}{'kFLOPs':>10}"]
        for n in self.nodes:
            ins = " ".join(f"{p}{s}" for p, s in n.in_specs)
            lines.append(f"{n.key:<18}{n.op:<16}{n.width or '-':>6}  {ins:<28}{n.out!s:<14}"
                         f"{n.cost.flops / 1e3:>10.1f}")
        lines.append(f"{'head':<18}{'linear':<16}{1:>6}  {'[B,' + str(self.head_in) + ']':<28}"
                     f"{'[B,1]':<14}{self.head_cost.flops / 1e3:>10.1f}")
        return "\n".join(lines)
