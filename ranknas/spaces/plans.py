"""From a space's resolved decisions to the concrete graph: routing, shapes and costs.

:class:`~ranknas.spaces.space.SearchSpace` walks an architecture's decisions into one
:class:`BlockPlan` per live block; :func:`shape_plans` turns those plans into the
:class:`~ranknas.spaces.materialized.MaterializedGraph` for a data schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ranknas.errors import InvalidArchitecture
from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces.graph import INPUT_KINDS, OperatorGraph, WidthTie
from ranknas.spaces.materialized import MaterializedGraph, MaterializedNode
from ranknas.spaces.ops import OpContext, Operator, TensorSpec, merged_spec

__all__ = ["BlockPlan", "shape_plans"]


@dataclass
class BlockPlan:
    """A block's resolved decisions (before shapes are known)."""

    op: Operator
    depth: int = 1
    widths: list[int | WidthTie | None] = field(default_factory=list)
    ports: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shared: tuple[str, ...] | None = None
    off: bool = False


def shape_plans(space: str, arch_id: str, graph: OperatorGraph,
                plans: Mapping[str, BlockPlan], schema: DataSchema,
                ctx: OpContext) -> MaterializedGraph:
    """The materialized graph of ``plans`` (block id -> plan) on ``schema``.

    Raises:
        InvalidArchitecture: a width tie, a port or the output has no live source, or an op
            rejects its input shapes.
    """
    specs: dict[str, TensorSpec] = {
        "dense": TensorSpec.dense(schema.num_dense),
        "sparse": TensorSpec.sparse(schema.num_sparse, ctx.embedding_dim)}
    widths: dict[str, int] = {}
    nodes: list[MaterializedNode] = []
    for node in graph.order:
        plan = plans.get(node)
        if plan is None or plan.off:
            continue
        ports = _route(node, plan, specs, plans)
        in_specs = {p: merged_spec(plan.op.port(p).kind, [specs[s] for s in srcs],
                                   ctx.embedding_dim) for p, srcs in ports.items()}
        for k, width in enumerate(plan.widths):
            if isinstance(width, WidthTie):
                if width.node not in widths:
                    raise InvalidArchitecture(f"{node}.width", f"tied to {width.node!r}, "
                                              "which is off or not computed before it")
                width = widths[width.node]
            key = node if k == plan.depth - 1 else f"{node}#{k}"
            try:
                out = plan.op.output_spec(in_specs, width, ctx)
                cost = plan.op.cost(in_specs, width, ctx)
            except InvalidArchitecture as err:
                raise InvalidArchitecture(node, f"op {plan.op.name}: {err.message}") from None
            nodes.append(MaterializedNode(
                key, node, plan.op.name, width, tuple((p, ports[p]) for p in in_specs),
                tuple(in_specs.items()), out, cost))
            port0 = plan.op.ports[0].name
            ports, in_specs = {port0: (key,)}, {port0: out}
        specs[node] = out
        widths[node] = width if width is not None else out.width
    sources = tuple(s for s in graph.output_sources if s in specs)
    if not sources:
        raise InvalidArchitecture("output", "every output source is switched off")
    head_in = sum(specs[s].numel for s in sources)
    return MaterializedGraph(space, arch_id, schema, ctx, tuple(nodes), sources, head_in)


def _route(node: str, plan: BlockPlan, specs: Mapping[str, TensorSpec],
           plans: Mapping[str, BlockPlan]) -> dict[str, tuple[str, ...]]:
    """Port -> live sources, with shared ('*') sources routed to ports by kind."""
    def live(sources: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(s for s in sources if s in INPUT_KINDS or not plans[s].off)

    ports = {p: live(s) for p, s in plan.ports.items()}
    if plan.shared is not None:
        shared = live(plan.shared)
        many = [p for p in plan.op.ports if p.many and p.name not in plan.ports]
        routed = {p.name: [] for p in many}
        for src in shared:
            kind = specs[src].kind
            target = next((p for p in many if p.kind == kind), many[0])
            routed[target.name].append(src)
        for p in many:  # a required port left empty takes every shared source instead
            if not routed[p.name] and not p.optional:
                routed = {q.name: [] for q in many}
                routed[p.name] = list(shared)
                break
        ports.update({p: tuple(s) for p, s in routed.items()})
    out: dict[str, tuple[str, ...]] = {}
    for port in plan.op.ports:
        sources = ports.get(port.name, ())
        if not sources:
            if port.optional:
                continue
            raise InvalidArchitecture(f"{node}.inputs", f"port {port.name!r} of op "
                                      f"{plan.op.name!r} has no live source")
        if not port.many and len(sources) != 1:
            raise InvalidArchitecture(f"{node}.{port.name}", "takes exactly one source")
        out[port.name] = sources
    return out

