"""OperatorGraph: an immutable search space as a graph of input, choice-block and output nodes.

It wraps (never subclasses) a ``networkx.DiGraph``. Edges are *candidate* connections; which of
them an architecture uses is decided by the blocks' input rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import networkx as nx

from ranknas.errors import SpaceError
from ranknas.spaces.ops import Kind, get_operator

DENSE_INPUT = "dense"
SPARSE_INPUT = "sparse"
OUTPUT = "output"
INPUT_KINDS = MappingProxyType({DENSE_INPUT: Kind.DENSE, SPARSE_INPUT: Kind.SPARSE})
SHARED_PORT = "*"  # one input set shared by the op's many-source ports, routed by kind
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$")


@dataclass(frozen=True)
class Fixed:
    """The port always reads these sources (optional sources that are off are skipped)."""

    sources: tuple[str, ...]


@dataclass(frozen=True)
class AnyOf:
    """The port reads ``min..max`` of ``candidates``: a :class:`~ranknas.spaces.choices.Subset`."""

    candidates: tuple[str, ...]
    min: int = 1
    max: int | None = None


@dataclass(frozen=True)
class OneOf:
    """The port reads exactly one of ``candidates``: a categorical decision."""

    candidates: tuple[str, ...]


InputRule = Fixed | AnyOf | OneOf


@dataclass(frozen=True)
class WidthTie:
    """The block's width equals the (resolved) width of block ``node``."""

    node: str


@dataclass(frozen=True)
class Block:
    """A choice block: candidate ops, widths, depth and input rules.

    Args:
        id: Unique node id (letters, digits, ``_``, ``-``, dot-separated).
        ops: Candidate operator names; one entry means the op is fixed.
        widths: Candidate widths, a :class:`WidthTie`, or None (the op's default).
        depth: Candidate numbers of stacked layers (stackable ops only).
        inputs: Port name -> rule. Port ``*`` feeds every many-source port of the chosen op.
        optional: The block can be switched off (decision ``<id>.on``).
    """

    id: str
    ops: tuple[str, ...]
    widths: tuple[int, ...] | WidthTie | None = None
    depth: tuple[int, ...] = (1,)
    inputs: Mapping[str, InputRule] = field(default_factory=dict)
    optional: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))

    def __reduce__(self) -> tuple:  # a mappingproxy does not pickle (worker processes)
        return (Block, (self.id, self.ops, self.widths, self.depth, dict(self.inputs),
                        self.optional))

    def sources(self) -> set[str]:
        out: set[str] = set()
        for rule in self.inputs.values():
            out.update(rule.sources if isinstance(rule, Fixed) else rule.candidates)
        return out

    def __hash__(self) -> int:
        return hash((self.id, self.ops, self.widths, self.depth, tuple(self.inputs.items()),
                     self.optional))


class OperatorGraph:
    """An immutable DAG: input nodes ``dense`` and ``sparse``, blocks, and ``output``.

    Args:
        blocks: Choice blocks, in any order that respects their inputs.
        output: Sources whose flattened outputs feed the final logit.
        where: Prefix for error messages (e.g. a YAML file name).

    Raises:
        SpaceError: duplicate or malformed ids, unknown operators, dangling inputs, cycles.
    """

    def __init__(self, blocks: Sequence[Block], output: Sequence[str], where: str = "") -> None:
        prefix = f"{where}." if where else ""
        g = nx.DiGraph()
        for node, kind in INPUT_KINDS.items():
            g.add_node(node, role="input", kind=kind)
        seen: dict[str, int] = {}
        for i, block in enumerate(blocks):
            at = f"{prefix}blocks[{i}]"
            if not _ID.match(block.id) or block.id in (*INPUT_KINDS, OUTPUT):
                raise SpaceError(f"{at}.id", f"bad or reserved block id {block.id!r}")
            if block.id in seen:
                raise SpaceError(f"{at}.id", f"duplicate id {block.id!r} "
                                             f"(also blocks[{seen[block.id]}])")
            seen[block.id] = i
            if not block.ops:
                raise SpaceError(f"{at}.ops", "list at least one operator")
            for j, op in enumerate(block.ops):
                get_operator(op, where=f"{at}.ops[{j}]")
            g.add_node(block.id, role="block", block=block, index=i)
        for i, block in enumerate(blocks):
            at = f"{prefix}blocks[{i}]"
            for port, rule in block.inputs.items():
                names = rule.sources if isinstance(rule, Fixed) else rule.candidates
                if not names:
                    raise SpaceError(f"{at}.inputs.{port}", "no sources listed")
                for src in names:
                    if src not in g or src == OUTPUT:
                        raise SpaceError(f"{at}.inputs.{port}",
                                         f"unknown source {src!r} (known: "
                                         f"{', '.join(n for n in g if n != OUTPUT)})")
                    g.add_edge(src, block.id)
            if isinstance(block.widths, WidthTie) and block.widths.node not in seen:
                raise SpaceError(f"{at}.width", f"tied to unknown block {block.widths.node!r}")
            if not block.inputs:
                raise SpaceError(f"{at}.inputs", "a block needs at least one input rule")
        g.add_node(OUTPUT, role="output", sources=tuple(output))
        if not output:
            raise SpaceError(f"{prefix}output", "name at least one source for the output")
        for src in output:
            if src not in g or src == OUTPUT:
                raise SpaceError(f"{prefix}output", f"unknown source {src!r}")
            g.add_edge(src, OUTPUT)
        if not nx.is_directed_acyclic_graph(g):
            cycle = " -> ".join(u for u, _ in nx.find_cycle(g))
            raise SpaceError(f"{prefix}blocks", f"inputs form a cycle: {cycle}")
        self._g = nx.freeze(g)
        # Topological order that keeps declaration order where the graph allows it.
        self._order = tuple(nx.lexicographical_topological_sort(
            g, key=lambda n: (g.nodes[n].get("index", -1), n)))

    @property
    def order(self) -> tuple[str, ...]:
        """Every node id in canonical topological order."""
        return self._order

    def blocks(self) -> Iterable[Block]:
        """Blocks in canonical order."""
        for n in self._order:
            if self._g.nodes[n]["role"] == "block":
                yield self._g.nodes[n]["block"]

    def block(self, node: str) -> Block:
        return self._g.nodes[node]["block"]

    def is_block(self, node: str) -> bool:
        return node in self._g and self._g.nodes[node]["role"] == "block"

    @property
    def output_sources(self) -> tuple[str, ...]:
        return self._g.nodes[OUTPUT]["sources"]

    def to_networkx(self) -> nx.DiGraph:
        """A mutable copy of the underlying graph."""
        return nx.DiGraph(self._g)

    def __len__(self) -> int:
        return self._g.number_of_nodes()
