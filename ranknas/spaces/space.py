"""SearchSpace: decisions, sampling, mutation, validation and materialization over a graph."""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ranknas.errors import InvalidArchitecture, SpaceError
from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.choices import Categorical, Choice, Subset, Value
from ranknas.spaces.graph import (
    SHARED_PORT,
    AnyOf,
    Block,
    Fixed,
    OneOf,
    OperatorGraph,
    WidthTie,
)
from ranknas.spaces.materialized import MaterializedGraph
from ranknas.spaces.ops import OpContext, get_operator
from ranknas.spaces.plans import BlockPlan, shape_plans

#: Criteo's shape, for spaces materialized without a dataset at hand.
CRITEO_LIKE = DataSchema(13, (100_000,) * 26, name="criteo-like")
_MAX_TRIES = 200
#: Materialized graphs a space keeps (an LRU by architecture id and schema).
MATERIALIZED_CACHE = 256
_PLANS_CACHE = 16  # resolved decisions of the latest canonical architectures


def width_choice_name(block: str, layer: int) -> str:
    return f"{block}.width" if layer == 0 else f"{block}.width.{layer}"


def shared_choice_name(block: str) -> str:
    return f"{block}.in"


class SearchSpace:
    """A named, versioned search space over an :class:`OperatorGraph`.

    ``choices()`` is all a strategy ever sees: every decision by name in canonical order.
    Decisions can be inactive (the width of an op not chosen, the inputs of a block nobody
    reads); :meth:`canonicalize` drops those, so equal models get equal ``arch_id``.

    Args:
        name: Space name, e.g. ``nasrec_full``.
        graph: The operator graph.
        context: Embedding dim, layernorm and activation shared by all ops.
        version: Bumped whenever a change alters what an architecture means.
        default_schema: Data shape used when :meth:`materialize` gets none.
        description: One line for ``ranknas spaces list``.
    """

    def __init__(self, name: str, graph: OperatorGraph, context: OpContext | None = None,
                 version: str = "1", default_schema: DataSchema = CRITEO_LIKE,
                 description: str = "") -> None:
        self.name = name
        self.graph = graph
        self.context = context or OpContext()
        self.version = version
        self.default_schema = default_schema
        self.description = description
        self._choices: dict[str, Choice] = {}
        self._materialized: OrderedDict[tuple[str, DataSchema], MaterializedGraph] = \
            OrderedDict()
        self._plans: OrderedDict[str, dict[str, BlockPlan]] = OrderedDict()
        for block in graph.blocks():
            for choice in self._block_choices(block):
                self._choices[choice.name] = choice

    def __getstate__(self) -> dict:  # pickled for worker processes: without the caches
        return {**self.__dict__, "_materialized": OrderedDict(), "_plans": OrderedDict()}

    # -- decisions ------------------------------------------------------------------------
    def _block_choices(self, b: Block) -> list[Choice]:
        ops = [get_operator(o) for o in b.ops]
        out: list[Choice] = []
        if b.optional:
            out.append(Categorical(f"{b.id}.on", (False, True)))
        if len(b.ops) > 1:
            out.append(Categorical(f"{b.id}.op", tuple(b.ops)))
        if len(b.depth) > 1:
            if not any(op.stackable for op in ops):
                raise SpaceError(f"{b.id}.depth", "none of the ops can be stacked "
                                 "(stackable: one-port ops such as linear-2d, linear-3d)")
            out.append(Categorical(f"{b.id}.depth", tuple(b.depth)))
        if isinstance(b.widths, tuple) and len(b.widths) > 1:
            if all(op.width_mode == "none" for op in ops):
                raise SpaceError(f"{b.id}.width", "no candidate op takes a width")
            out += [Categorical(width_choice_name(b.id, k), b.widths) for k in range(max(b.depth))]
        for port, rule in b.inputs.items():
            name = shared_choice_name(b.id) if port == SHARED_PORT else f"{b.id}.{port}"
            if isinstance(rule, AnyOf):
                out.append(Subset(name, rule.candidates, rule.min, rule.max))
            elif isinstance(rule, OneOf):
                out.append(Categorical(name, rule.candidates))
        shared = b.inputs.get(SHARED_PORT)
        for op in ops:
            for port in op.ports:
                if port.name in b.inputs:
                    continue
                if shared is not None and not port.many:
                    cands = shared.sources if isinstance(shared, Fixed) else shared.candidates
                    name = f"{b.id}.{port.name}"
                    if name not in {c.name for c in out}:
                        out.append(Categorical(name, tuple(cands)))
                elif shared is None and not port.optional:
                    raise SpaceError(f"{b.id}.inputs", f"op {op.name!r} needs port "
                                     f"{port.name!r}; add an input rule for it or for '*'")
        return out

    def choices(self) -> list[Choice]:
        """Every decision, in canonical order."""
        return list(self._choices.values())

    def choice(self, name: str) -> Choice:
        try:
            return self._choices[name]
        except KeyError:
            raise InvalidArchitecture(name, "no such decision in space "
                                      f"{self.name!r}") from None

    # -- canonical form -------------------------------------------------------------------
    def _resolve(self, values: Mapping[str, Value]
                 ) -> tuple[dict[str, Value], dict[str, BlockPlan]]:
        """Walk back from the output, reading only the decisions that matter."""
        chosen: dict[str, Value] = {}

        def read(name: str) -> Value:
            choice = self._choices[name]
            if name not in values:
                raise InvalidArchitecture(name, f"missing decision; allowed: {choice.describe()}")
            chosen[name] = choice.check(values[name])
            return chosen[name]

        needed = set(self.graph.output_sources)
        plans: dict[str, BlockPlan] = {}
        for node in reversed(self.graph.order):
            if node not in needed or not self.graph.is_block(node):
                continue
            b = self.graph.block(node)
            op = get_operator(read(f"{node}.op") if len(b.ops) > 1 else b.ops[0])
            plan = BlockPlan(op)
            plans[node] = plan
            if b.optional and not read(f"{node}.on"):
                plan.off = True
                continue
            if op.stackable:
                plan.depth = read(f"{node}.depth") if len(b.depth) > 1 else b.depth[0]
            if op.width_mode == "none" or b.widths is None:
                plan.widths = [None] * plan.depth
            elif isinstance(b.widths, WidthTie):
                plan.widths = [b.widths] * plan.depth
                needed.add(b.widths.node)
            elif len(b.widths) == 1:
                plan.widths = [b.widths[0]] * plan.depth
            else:
                plan.widths = [read(width_choice_name(node, k)) for k in range(plan.depth)]
            shared = b.inputs.get(SHARED_PORT)
            for port in op.ports:
                rule = b.inputs.get(port.name)
                if rule is None and shared is not None and not port.many:
                    rule = OneOf(())  # auto left/right decision over the shared candidates
                if rule is None:
                    continue
                plan.ports[port.name] = self._read_rule(node, port.name, rule, read)
            if shared is not None and any(p.many and p.name not in b.inputs for p in op.ports):
                plan.shared = self._read_rule(node, SHARED_PORT, shared, read)
            for sources in (*plan.ports.values(), plan.shared or ()):
                needed.update(sources)
        return chosen, plans

    @staticmethod
    def _read_rule(node: str, port: str, rule: Fixed | AnyOf | OneOf, read) -> tuple[str, ...]:
        if isinstance(rule, Fixed):
            return rule.sources
        name = shared_choice_name(node) if port == SHARED_PORT else f"{node}.{port}"
        value = read(name)
        return (value,) if isinstance(rule, OneOf) else tuple(value)

    def canonicalize(self, values: Mapping[str, Any], where: str = "choices") -> Architecture:
        """Architecture from raw decision values: unknown names rejected, inactive ones dropped.

        Raises:
            InvalidArchitecture: naming the decision at fault and what it allows.
        """
        if not isinstance(values, Mapping):
            raise InvalidArchitecture(where, "expected a mapping of decision name to value")
        unknown = [k for k in values if k not in self._choices]
        if unknown:
            close = [n for n in self._choices if n.split(".")[0] == str(unknown[0]).split(".")[0]]
            hint = f" (decisions of that block: {', '.join(close)})" if close else ""
            raise InvalidArchitecture(f"{where}.{unknown[0]}",
                                      f"unknown decision in space {self.name!r}{hint}")
        chosen, plans = self._resolve(values)
        arch = Architecture(self.name, self.version, tuple(chosen.items()))
        # a materialize of a fresh canonical architecture (sampling checks every draw) reuses
        # the walk; plans are read, never changed
        self._plans[arch.arch_id] = plans
        if len(self._plans) > _PLANS_CACHE:
            self._plans.popitem(last=False)
        return arch

    def from_json(self, obj: Any, where: str = "architecture") -> Architecture:
        """Architecture from its JSON object, checked against this space."""
        space, _version, raw = Architecture.parse_json(obj, where)
        if space != self.name:
            raise InvalidArchitecture(f"{where}.space", f"architecture is for space {space!r}, "
                                      f"not {self.name!r}")
        arch = self.canonicalize(raw, where=f"{where}.choices")
        self.materialize(arch)
        return arch

    # -- sampling -------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> Architecture:
        """A random valid architecture; decisions are drawn independently, invalid draws redrawn."""
        last: InvalidArchitecture | None = None
        for _ in range(_MAX_TRIES):
            values = {c.name: c.sample(rng) for c in self._choices.values()}
            try:
                arch = self.canonicalize(values)
                self.materialize(arch)
                return arch
            except InvalidArchitecture as err:
                last = err
        raise SpaceError(self.name, f"no valid architecture in {_MAX_TRIES} draws; last: {last}")

    def mutate(self, arch: Architecture, rng: random.Random) -> Architecture:
        """A valid neighbour: one active decision moved one step; newly active ones sampled."""
        self.validate(arch)
        active = [self._choices[name] for name, _ in arch.choices]
        for _ in range(_MAX_TRIES):
            choice = active[rng.randrange(len(active))]
            options = choice.neighbours(arch[choice.name])
            if not options:
                continue
            values: dict[str, Value] = {c.name: c.sample(rng) for c in self._choices.values()}
            values.update(arch.as_dict())
            values[choice.name] = options[rng.randrange(len(options))]
            try:
                child = self.canonicalize(values)
                self.materialize(child)
            except InvalidArchitecture:
                continue
            if child.arch_id != arch.arch_id:
                return child
        raise SpaceError(self.name, f"found no valid mutation of {arch.arch_id}")

    # -- checking and shapes --------------------------------------------------------------
    def validate(self, arch: Architecture) -> None:
        """Raise InvalidArchitecture unless ``arch`` is a canonical, buildable member."""
        if arch.space != self.name:
            raise InvalidArchitecture("space", f"architecture is for {arch.space!r}, "
                                      f"not {self.name!r}")
        canon = self.canonicalize(arch.as_dict())
        extra = sorted(set(arch.as_dict()) - set(canon.as_dict()))
        if extra:
            raise InvalidArchitecture(extra[0], "decision is inactive in this architecture; "
                                      "build architectures with space.canonicalize()")
        self.materialize(arch)

    def materialize(self, arch: Architecture,
                    schema: DataSchema | None = None) -> MaterializedGraph:
        """The concrete DAG of ops with shapes and costs, for ``schema`` (default: Criteo-like).

        The last :data:`MATERIALIZED_CACHE` graphs are kept (they are immutable): a supernet
        step materializes its path several times (sampling checks it, encoding reads it).
        """
        schema = schema or self.default_schema
        key = (arch.arch_id, schema)
        hit = self._materialized.get(key)
        if hit is not None:
            self._materialized.move_to_end(key)
            return hit
        graph = self._materialize(arch, schema)
        self._materialized[key] = graph
        if len(self._materialized) > MATERIALIZED_CACHE:
            self._materialized.popitem(last=False)
        return graph

    def _materialize(self, arch: Architecture, schema: DataSchema) -> MaterializedGraph:
        plans = self._plans.get(arch.arch_id)
        if plans is None:
            _, plans = self._resolve(arch.as_dict())
        return shape_plans(self.name, arch.arch_id, self.graph, plans, schema, self.context)

    # -- size -----------------------------------------------------------------------------
    def size(self) -> float:
        """log10 of the number of distinct decision assignments, counting per block only the
        decisions active under each op; blocks nobody reads are not deducted (an upper bound)."""
        total = 0.0
        for b in self.graph.blocks():
            per_op = 0
            for name in b.ops:
                op = get_operator(name)
                count = 1
                for c in self._block_choices(b):
                    suffix = c.name[len(b.id) + 1:]
                    if suffix in ("on", "op"):
                        continue
                    if suffix.startswith("width") and op.width_mode == "none":
                        continue
                    if suffix == "depth" and not op.stackable:
                        continue
                    port = "*" if suffix == "in" else suffix
                    is_port = not suffix.startswith(("width", "depth"))
                    if is_port and port != "*" and port not in {p.name for p in op.ports}:
                        continue
                    if is_port and port == "*" and not any(p.many for p in op.ports):
                        continue
                    count *= c.size()
                per_op += count
            total += math.log10(per_op + (1 if b.optional else 0))
        return total

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, {len(self._choices)} decisions, v{self.version})"
