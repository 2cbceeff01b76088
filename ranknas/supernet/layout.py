"""Widest shapes and per-source storage layouts of a search space, computed once per supernet.

Two passes over the operator graph, in topological order:

1. **Bounds.** For every node, the widest output it can produce, in both port units: dense
   features (a sparse output counts ``N * E``) and sparse fields (a dense output counts
   ``ceil(D / E)``). A port's widest merged input is the sum of its ``k`` widest candidate
   sources, ``k`` the most sources its rule admits (1 for ``OneOf`` and single-source ports).
   An op's widest output is ``op.output_spec`` at those inputs, maximised over its widths;
   stacked layers chain (layer ``k`` reads layer ``k-1``'s widest output).
2. **Storage.** Every port of every (block, op, layer) gets a :class:`PortStorage`: each
   candidate source owns a :class:`Region` of positions, in canonical candidate order. A region
   is sized for its source's widest output, capped at ``max_slot`` (the raw inputs, whose width
   the data fixes, are never capped): a block output wider than that
   reuses its region's weights modulo ``max_slot`` (exact for extraction, since the
   standalone copy gathers the same positions; it only ties weights inside the supernet). A
   source whose op is *pass-through* (``concat``, ``concat-3d``) also carries a sub-layout, so
   a consumer's weights are indexed by the original sources behind the concatenation; a
   ``concat-3d`` seen by a dense port scales its field layout by E (flattening keeps each field
   contiguous). A dense ``concat`` seen by a sparse port is padded and folded as a whole, so it
   is indexed by position instead.

:meth:`SpaceLayout.port_positions` turns one architecture's actual sources of a port into
the storage position of every merged input feature (or field).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ranknas.errors import InvalidArchitecture, SpaceError
from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces.graph import SHARED_PORT, AnyOf, Block, Fixed, OneOf, WidthTie
from ranknas.spaces.materialized import MaterializedNode
from ranknas.spaces.ops import Kind, Operator, Port, TensorSpec, get_operator
from ranknas.spaces.space import SearchSpace
from ranknas.supernet.elastic_base import ElasticSpec, elastic_class


def units(spec: TensorSpec, kind: Kind, dim: int) -> int:
    """Size of ``spec`` as seen by a port of ``kind``: features (dense) or fields (sparse)."""
    if kind is Kind.DENSE:
        return spec.numel
    return spec.width if spec.kind is Kind.SPARSE else math.ceil(spec.width / dim)


@dataclass(frozen=True)
class Composite:
    """The sub-layout of a pass-through source: where each of its own sources lives.

    Attributes:
        kids: Source -> (offset, region), in the pass-through op's own units.
        native: The pass-through op's kind (its input and output kind).
        scale: Positions per native unit as seen by the consumer (E for fields seen as
            features, else 1).
    """

    kids: Mapping[str, tuple[int, Region]]
    native: Kind
    scale: int


@dataclass(frozen=True)
class Region:
    """Storage positions reserved for one source of a port.

    Attributes:
        size: Positions (port units). A source's merged positions ``p`` land on
            ``p % size`` unless a composite applies.
        composites: Pass-through op name -> sub-layout, used when the source's chosen op is
            that pass-through op.
    """

    size: int
    composites: Mapping[str, Composite] = field(default_factory=dict)


@dataclass(frozen=True)
class PortStorage:
    """Storage layout of one port of one (block, op, layer).

    Attributes:
        kind: The port's kind.
        slots: Candidate source -> (offset, region), in canonical order.
        size: Total storage positions.
        bound: Widest merged input actually fed (port units).
    """

    kind: Kind
    slots: Mapping[str, tuple[int, Region]]
    size: int
    bound: int


@dataclass(frozen=True)
class LayerShape:
    """The widest shapes of one (block, op, layer)."""

    block: str
    op: Operator
    layer: int
    ports: Mapping[str, PortStorage]
    widths: tuple[int | None, ...]
    out: TensorSpec


def port_sources(block: Block, port: Port) -> tuple[tuple[str, ...], int] | None:
    """(candidate sources, most sources connected at once) of ``port`` in ``block``, or None
    when the port can never be fed (an optional port without a rule)."""
    rule = block.inputs.get(port.name)
    single = False
    if rule is None:
        rule = block.inputs.get(SHARED_PORT)
        single = not port.many  # an auto left/right decision over the shared candidates
    if rule is None:
        return None
    if isinstance(rule, Fixed):
        cands, most = rule.sources, len(rule.sources)
    elif isinstance(rule, AnyOf):
        cands = rule.candidates
        most = len(cands) if rule.max is None else min(rule.max, len(cands))
    elif isinstance(rule, OneOf):
        cands, most = rule.candidates, 1
    else:  # pragma: no cover - the graph admits only these rules
        raise SpaceError(f"{block.id}.inputs", f"unknown input rule {rule!r}")
    return cands, 1 if single else most


def module_key(block: str, op: str, layer: int) -> str:
    """``nn.ModuleDict`` key of one (block, op, layer): dots are not allowed in module names."""
    return f"{block.replace('.', '/')}:{op}:{layer}"


class SpaceLayout:
    """Widest shapes and storage layouts of every (block, op, layer) of ``space``.

    Args:
        space: The search space.
        schema: Data shape (dense features, sparse fields).
        max_slot: Cap on one source's region and on position-indexed storage.
    """

    def __init__(self, space: SearchSpace, schema: DataSchema, max_slot: int) -> None:
        self.space, self.schema, self.max_slot = space, schema, max_slot
        self._arange: dict[tuple[int, int], np.ndarray] = {}
        self.ctx = space.context
        self.dim = space.context.embedding_dim
        self._inputs = {"dense": TensorSpec.dense(schema.num_dense),
                        "sparse": TensorSpec.sparse(schema.num_sparse, self.dim)}
        self._bound: dict[str, tuple[int, int]] = {
            k: (units(s, Kind.DENSE, self.dim), units(s, Kind.SPARSE, self.dim))
            for k, s in self._inputs.items()}
        self._resolved: dict[str, tuple[int, ...]] = {}
        self._chains: dict[tuple[str, str], list[tuple[dict[str, int], TensorSpec]]] = {}
        self._widths: dict[tuple[str, str], tuple[int | None, ...]] = {}
        self._out: dict[tuple[str, str], TensorSpec] = {}
        self._regions: dict[tuple[str, Kind], Region] = {}
        for block in space.graph.blocks():
            self._bound_block(block)
        self.layers: dict[tuple[str, str], list[LayerShape]] = {}
        for block in space.graph.blocks():
            for name in block.ops:
                self.layers[(block.id, name)] = self._layer_shapes(block, get_operator(name))
        outputs = space.graph.output_sources
        self.head = self._storage(Kind.DENSE, outputs, len(outputs))

    # -- pass 1: bounds -------------------------------------------------------------------
    def bound(self, node: str, kind: Kind) -> int:
        """Widest output of ``node`` in ``kind`` units."""
        dense, fields = self._bound[node]
        return dense if kind is Kind.DENSE else fields

    def _port_bound(self, cands: tuple[str, ...], most: int, kind: Kind) -> int:
        sizes = sorted((self.bound(c, kind) for c in cands), reverse=True)
        return sum(sizes[:most])

    def _layer_widths(self, block: Block, op: Operator) -> tuple[int | None, ...]:
        if op.width_mode == "none" or block.widths is None:
            return (None,)
        if isinstance(block.widths, WidthTie):
            return self._resolved[block.widths.node]
        return tuple(block.widths)

    def _widest_out(self, block: Block, op: Operator, ins: Mapping[str, int],
                    widths: tuple[int | None, ...]) -> TensorSpec:
        specs = {p: (TensorSpec.dense(n) if op.port(p).kind is Kind.DENSE
                     else TensorSpec.sparse(n, self.dim)) for p, n in ins.items()}
        outs = []
        for w in widths:
            try:
                outs.append(op.output_spec(specs, w, self.ctx))
            except InvalidArchitecture:
                continue
        if not outs:
            raise SpaceError(block.id, f"op {op.name!r} takes none of its widths "
                             f"{list(widths)} at its widest inputs {specs}")
        return max(outs, key=lambda s: s.width)

    def _bound_block(self, block: Block) -> None:
        dense = fields = 0
        resolved: set[int] = set()
        for name in block.ops:
            op = get_operator(name)
            ins: dict[str, int] = {}
            for port in op.ports:
                found = port_sources(block, port)
                if found is not None:
                    ins[port.name] = self._port_bound(*found, port.kind)
            widths = self._layer_widths(block, op)
            chain = []
            for _ in range(max(block.depth) if op.stackable else 1):
                out = self._widest_out(block, op, ins, widths)
                chain.append((ins, out))
                ins = {op.ports[0].name: units(out, op.ports[0].kind, self.dim)}
            out = max((o for _, o in chain), key=lambda s: s.width)
            key = (block.id, name)
            self._chains[key], self._widths[key], self._out[key] = chain, widths, out
            dense = max(dense, units(out, Kind.DENSE, self.dim))
            fields = max(fields, units(out, Kind.SPARSE, self.dim))
            resolved.update(out.width if w is None else w for w in widths)
        self._bound[block.id] = (dense, fields)
        self._resolved[block.id] = tuple(sorted(resolved))

    # -- pass 2: storage ------------------------------------------------------------------
    def region(self, node: str, kind: Kind) -> Region:
        """The positions a consumer port of ``kind`` reserves for source ``node``."""
        key = (node, kind)
        if key in self._regions:
            return self._regions[key]
        if node in self._inputs:
            reg = Region(units(self._inputs[node], kind, self.dim))  # the data's own width
        else:
            block = self.space.graph.block(node)
            size, comps = 0, {}
            for name in block.ops:
                op = get_operator(name)
                out = self._out[(node, name)]
                opaque = op.out_kind is Kind.DENSE and kind is Kind.SPARSE
                if not elastic_class(name).passthrough or opaque:
                    size = max(size, min(units(out, kind, self.dim), self.max_slot))
                    continue
                found = port_sources(block, op.ports[0])
                kids, offset = {}, 0
                for src in found[0] if found else ():
                    sub = self.region(src, op.out_kind)
                    kids[src] = (offset, sub)
                    offset += sub.size
                scale = self.dim if op.out_kind is Kind.SPARSE and kind is Kind.DENSE else 1
                comps[name] = Composite(MappingProxyType(kids), op.out_kind, scale)
                size = max(size, offset * scale)
            reg = Region(max(size, 1), MappingProxyType(comps))
        self._regions[key] = reg
        return reg

    def _storage(self, kind: Kind, cands: tuple[str, ...], most: int) -> PortStorage:
        slots, offset = {}, 0
        for src in cands:
            reg = self.region(src, kind)
            slots[src] = (offset, reg)
            offset += reg.size
        return PortStorage(kind, MappingProxyType(slots), offset,
                           self._port_bound(cands, most, kind))

    def _layer_shapes(self, block: Block, op: Operator) -> list[LayerShape]:
        key = (block.id, op.name)
        shapes = []
        for k, (ins, out) in enumerate(self._chains[key]):
            ports: dict[str, PortStorage] = {}
            if k == 0:
                for port in op.ports:
                    found = port_sources(block, port)
                    if found is not None:
                        ports[port.name] = self._storage(port.kind, *found)
            else:
                port = op.ports[0]
                bound = ins[port.name]
                reg = Region(min(bound, self.max_slot))
                ports[port.name] = PortStorage(
                    port.kind, MappingProxyType({f"{block.id}#{k - 1}": (0, reg)}), reg.size,
                    bound)
            shapes.append(LayerShape(block.id, op, k, MappingProxyType(ports),
                                     self._widths[key], out))
        return shapes

    def elastic_specs(self) -> dict[str, ElasticSpec]:
        """``module_key`` -> the :class:`ElasticSpec` of every (block, op, layer)."""
        out = {}
        for (block, name), shapes in self.layers.items():
            for shape in shapes:
                out[module_key(block, name, shape.layer)] = ElasticSpec(
                    shape.op, self.ctx,
                    MappingProxyType({p: s.size for p, s in shape.ports.items()}),
                    MappingProxyType({p: s.bound for p, s in shape.ports.items()}),
                    shape.widths, self.max_slot)
        return out

    # -- one architecture -----------------------------------------------------------------
    def port_positions(self, storage: PortStorage, sources: tuple[str, ...],
                       nodes: Mapping[str, MaterializedNode],
                       specs: Mapping[str, TensorSpec]) -> np.ndarray:
        """Storage position of every merged position of a port fed by ``sources``.

        Args:
            storage: The port's layout.
            sources: The architecture's live sources of the port, in merge order.
            nodes: The architecture's materialized nodes by key.
            specs: Output spec of every key (inputs included).

        Returns:
            int64 positions ``[D]`` (dense ports) or ``[N]`` (sparse ports); numpy, as an
            encoding builds thousands of these per path (a small tensor op costs ~10x).
        """
        parts = []
        for src in sources:
            if src not in storage.slots:
                raise InvalidArchitecture(src, "source has no storage in this port "
                                               f"(known: {', '.join(storage.slots)})")
            offset, reg = storage.slots[src]
            parts.append(offset + self._positions(src, reg, storage.kind, nodes, specs))
        return np.concatenate(parts)

    def _wrapped(self, n: int, size: int) -> np.ndarray:
        """``arange(n) % size``, read-only and cached (a ``nasrec_full`` encoding asks for ~80
        a path, of 15 distinct ones)."""
        key = (n, size)
        idx = self._arange.get(key)
        if idx is None:
            idx = self._arange[key] = np.arange(n, dtype=np.int64) % size
            idx.flags.writeable = False
        return idx

    def _positions(self, src: str, reg: Region, kind: Kind,
                   nodes: Mapping[str, MaterializedNode],
                   specs: Mapping[str, TensorSpec]) -> np.ndarray:
        node = nodes.get(src)
        comp = reg.composites.get(node.op) if node is not None else None
        if comp is None:
            return self._wrapped(units(specs[src], kind, self.dim), reg.size)
        idx = np.concatenate([comp.kids[c][0] + self._positions(c, comp.kids[c][1], comp.native,
                                                                  nodes, specs)
                              for c in node.ports[0][1]])
        if comp.scale != 1:
            idx = (idx[:, None] * comp.scale + np.arange(comp.scale)).reshape(-1)
        return idx
