"""The shared-weight supernet over any ranknas search space, with exact extraction.

``Supernet(space, schema)`` holds, for every block of the space and every candidate op of it
(and every stacked layer), the op's parameters at the widest shapes it can ever see, in one
:class:`~ranknas.supernet.elastic_base.ElasticOp` each; one
:class:`~ranknas.spaces.model.FusedEmbedding`; and one logit head over the widest output
features. ``forward(dense, sparse, arch)`` always takes the architecture: it materializes it
(the per-architecture plan is cached, LRU by ``arch_id``) and runs only the active nodes, each
with its op's weights sliced to the chosen widths and to the storage positions of the sources
actually connected (see :mod:`ranknas.supernet.layout`). Unselected ops, widths and inputs
cost nothing.

``extract(arch)`` returns exactly what ``build_model(space, arch, schema)`` returns (same
class, parameter names and shapes) with copies of the sliced weights, so
``supernet(dense, sparse, arch) == supernet.extract(arch)(dense, sparse)``.

Design notes:

- **Slicing, not masking.** This first version executes each sampled subnet at its own shapes
  (``F.linear(x, W[:w, cols], b[:w])``), which makes it exactly equal to the standalone model
  (same matmul shapes; LayerNorms normalise over the used features only) and makes unselected
  ops free. A fixed-shape masked execution (widest widths, connection masks) that
  ``torch.compile`` / CUDA graphs can capture once for every path is a later performance step;
  it trades exactness at the subnet's own widths for fewer, larger kernels.
- **Caches.** Per architecture: the materialized graph, the execution order and every port's
  storage positions (a ``slice`` when contiguous, else an index tensor), LRU by ``arch_id``.
  Index tensors are deduplicated across architectures (equal positions share one tensor), so
  a block fed by the same source set at the same widths reuses one gather index. Moving the
  module (``.to(device)``) clears both caches.
- **Initialisation** runs under ``torch.random.fork_rng`` with ``manual_seed(seed)``; every
  widest ``Linear`` draws ``U(-1/sqrt(f), 1/sqrt(f))`` with ``f`` the widest fan-in actually
  fed, the scale of the widest standalone model.
- **Size.** ``max_slot`` caps each source's storage region (and position-indexed storage such
  as the gate of ``sigmoid-gating``); wider block outputs reuse weights modulo the cap. The
  default (2048) never binds in ``dlrm``, ``nasrec_*`` or ``examples/my_space.yaml`` on
  Criteo-shaped data (13 dense, 26 fields of 16; widest block output: 1440 features), and
  keeps ``rankitect`` (whose 512-field sparse layers flatten to 8192 features and whose chained
  ``dcn-cross`` layers grow to ~376k) at ~176M dense parameters instead of billions.
  ``max_params`` refuses, before allocating, a supernet that would not fit.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ranknas.errors import ConfigError, InvalidArchitecture
from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.materialized import MaterializedGraph
from ranknas.spaces.model import FusedEmbedding, RankingModel, _as_kind, build_model
from ranknas.spaces.ops import Kind, TensorSpec, get_operator
from ranknas.spaces.space import SearchSpace
from ranknas.supernet.elastic_base import (
    Cols,
    ElasticOp,
    PortCols,
    SourceLayout,
    elastic_class,
    take,
    uniform_parameter,
)
from ranknas.supernet.layout import SpaceLayout, module_key

#: Default cap on one source's storage region (positions; see the module docstring).
DEFAULT_MAX_SLOT = 2048
#: Default refusal threshold on the supernet's dense (non-embedding) parameter count.
DEFAULT_MAX_PARAMS = 400_000_000


@dataclass(frozen=True)
class _Step:
    """One active node: its elastic op, width, input slots per port, storage positions."""

    module: ElasticOp
    width: int | None
    inputs: tuple[tuple[str, tuple[int, ...], Kind], ...]
    layout: SourceLayout


@dataclass(frozen=True)
class SupernetPlan:
    """The cached execution plan of one architecture.

    Attributes:
        graph: The materialized architecture.
        steps: Active nodes in execution order (as ``RankingModel.ops``).
        output: Value slots concatenated into the head.
        head_cols: Head storage positions of the concatenated output features.
        modules: ``module_key`` of each step's elastic op.
    """

    graph: MaterializedGraph
    steps: tuple[_Step, ...]
    output: tuple[int, ...]
    head_cols: Cols
    modules: tuple[str, ...]


@dataclass(frozen=True)
class StoragePositions:
    """Storage positions of one architecture's inputs, on the CPU.

    Attributes:
        graph: The materialized architecture.
        ports: Per node (in ``graph.nodes`` order): port -> (merged input spec, the storage
            position of each merged feature or field).
        head: Storage position of each feature the logit head reads.
    """

    graph: MaterializedGraph
    ports: tuple[Mapping[str, tuple[TensorSpec, np.ndarray]], ...]
    head: np.ndarray


def _positive(value: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(where, f"expected a positive integer, got {value!r}")
    return value


class Supernet(nn.Module):
    """Shared widest weights of every op of ``space``; runs any architecture by slicing.

    Args:
        space: Any ranknas search space (built-in or YAML).
        schema: Data shape; default: the space's.
        seed: Seeds initialisation without touching global random state.
        max_slot: Cap on the storage positions of one source of a port.
        max_params: Refuse (ConfigError), before allocating, a supernet with more dense
            (non-embedding) parameters than this; the embedding table is the standalone
            model's own.
        plan_cache_size: Architectures whose execution plans are kept (LRU).

    Raises:
        ConfigError: a non-positive setting, an op without an elastic counterpart, or a
            supernet above ``max_params``.
    """

    def __init__(self, space: SearchSpace, schema: DataSchema | None = None, seed: int = 0, *,
                 max_slot: int = DEFAULT_MAX_SLOT, max_params: int = DEFAULT_MAX_PARAMS,
                 plan_cache_size: int = 4096) -> None:
        super().__init__()
        self.space = space
        self.schema = schema or space.default_schema
        self.embedding_dim = space.context.embedding_dim
        self.plan_cache_size = _positive(plan_cache_size, "supernet.plan_cache_size")
        self.layout = SpaceLayout(space, self.schema, _positive(max_slot, "supernet.max_slot"))
        specs = self.layout.elastic_specs()
        with torch.device("meta"):
            probe = [elastic_class(s.op.name)(s) for s in specs.values()]
        total = sum(p.numel() for m in probe for p in m.parameters()) + self.layout.head.size + 1
        if total > _positive(max_params, "supernet.max_params"):
            raise ConfigError("supernet.max_params", f"space {space.name!r} needs a supernet "
                              f"of {total:,} dense parameters (limit {max_params:,}); lower "
                              f"max_slot (now {max_slot}) or raise max_params")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embedding = FusedEmbedding(self.schema.cardinalities, self.embedding_dim)
            self.elastic = nn.ModuleDict(
                {key: elastic_class(s.op.name)(s) for key, s in specs.items()})
            head = self.layout.head
            self.head_weight = uniform_parameter((1, head.size), head.bound)
            self.head_bias = uniform_parameter((1,), head.bound)
        self._plans: OrderedDict[str, SupernetPlan] = OrderedDict()
        self._indices: dict[bytes, torch.Tensor] = {}

    # -- plans ----------------------------------------------------------------------------
    def _apply(self, fn, recurse: bool = True):  # .to()/.cuda(): drop device-bound caches
        self._plans = OrderedDict()
        self._indices = {}
        return super()._apply(fn, recurse)

    def _cols(self, idx: np.ndarray) -> Cols:
        """A slice when ``idx`` is contiguous, else a shared index tensor on the device."""
        n = idx.size
        first = int(idx[0])
        if int(idx[-1]) - first == n - 1 and (n == 1 or bool((np.diff(idx) == 1).all())):
            return slice(first, first + n)
        key = idx.tobytes()
        if key not in self._indices:
            if len(self._indices) >= 8 * self.plan_cache_size:
                self._indices = {}  # cached plans keep theirs; only sharing is lost
            self._indices[key] = torch.from_numpy(idx).to(self.head_bias.device)
        return self._indices[key]

    def positions(self, arch: Architecture) -> StoragePositions:
        """Where every port's merged input of ``arch`` lives in storage, as int64 numpy arrays
        (not cached; :meth:`plan` caches its device form). The fixed-shape execution
        (:mod:`ranknas.supernet.masked`) encodes paths from this without touching the device.

        Raises:
            InvalidArchitecture: ``arch`` is not a buildable member of the space.
        """
        if arch.space != self.space.name:
            raise InvalidArchitecture("space", f"architecture is for {arch.space!r}, not "
                                               f"{self.space.name!r}")
        graph = self.space.materialize(arch, self.schema)
        nodes = {n.key: n for n in graph.nodes}
        specs = {**graph.input_specs, **{n.key: n.out for n in graph.nodes}}
        layer = Counter[str]()
        ports = []
        for node in graph.nodes:
            k = layer[node.block]
            layer[node.block] += 1
            shape = self.layout.layers[(node.block, node.op)][k]
            ports.append(MappingProxyType({
                port: (spec, self.layout.port_positions(shape.ports[port], sources, nodes,
                                                        specs))
                for (port, sources), (_, spec) in zip(node.ports, node.in_specs, strict=True)}))
        head = self.layout.port_positions(self.layout.head, graph.output_sources, nodes, specs)
        return StoragePositions(graph, tuple(ports), head)

    def plan(self, arch: Architecture) -> SupernetPlan:
        """The execution plan of ``arch`` (cached, LRU by ``arch_id``).

        Raises:
            InvalidArchitecture: ``arch`` is not a buildable member of the space.
        """
        key = arch.arch_id
        cached = self._plans.get(key)
        if cached is not None:
            self._plans.move_to_end(key)
            return cached
        pos = self.positions(arch)
        slots = {"dense": 0, "sparse": 1}
        layer = Counter[str]()
        steps, modules = [], []
        for node, ports in zip(pos.graph.nodes, pos.ports, strict=True):
            k = layer[node.block]
            layer[node.block] += 1
            op = get_operator(node.op)
            inputs, cols = [], {}
            for port, sources in node.ports:
                spec, idx = ports[port]
                cols[port] = PortCols(spec, self._cols(idx))
                inputs.append((port, tuple(slots[s] for s in sources), op.port(port).kind))
            mkey = module_key(node.block, node.op, k)
            steps.append(_Step(self.elastic[mkey], node.width, tuple(inputs),
                               MappingProxyType(cols)))
            modules.append(mkey)
            slots[node.key] = len(slots)
        plan = SupernetPlan(pos.graph, tuple(steps),
                            tuple(slots[s] for s in pos.graph.output_sources),
                            self._cols(pos.head), tuple(modules))
        self._plans[key] = plan
        if len(self._plans) > self.plan_cache_size:
            self._plans.popitem(last=False)
        return plan

    # -- running --------------------------------------------------------------------------
    def forward(self, dense: torch.Tensor, sparse: torch.Tensor,
                arch: Architecture) -> torch.Tensor:
        """Logits ``[B]`` of ``arch`` from dense features ``[B, D]`` and sparse ids ``[B, F]``.

        Raises:
            InvalidArchitecture: ``arch`` is not a buildable member of the space.
        """
        plan = self.plan(arch)
        values = [dense, self.embedding(sparse)]
        dim = self.embedding_dim
        for step in plan.steps:
            args = {}
            for port, sources, kind in step.inputs:
                parts = [_as_kind(values[i], kind, dim) for i in sources]
                args[port] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            values.append(step.module(args, step.width, step.layout))
        feats = [values[i].flatten(1) for i in plan.output]
        x = feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)
        return F.linear(x, take(self.head_weight, 1, plan.head_cols), self.head_bias).squeeze(-1)

    @torch.no_grad()
    def extract(self, arch: Architecture) -> RankingModel:
        """A standalone model of ``arch`` with copies of the supernet's sliced weights.

        It is what ``build_model(space, arch, schema)`` returns (same class, parameter names
        and shapes), on the supernet's device and in its train/eval mode, and computes exactly
        what ``self(dense, sparse, arch)`` computes.
        """
        plan = self.plan(arch)
        device = self.head_bias.device
        model = build_model(self.space, arch, self.schema).to(device)
        model.embedding.table.weight.copy_(self.embedding.table.weight)
        for module, step in zip(model.ops, plan.steps, strict=True):
            module.load_state_dict(step.module.export(step.width, step.layout), strict=True)
        model.head.weight.copy_(take(self.head_weight, 1, plan.head_cols))
        model.head.bias.copy_(self.head_bias)
        return model.train(self.training)

    @torch.no_grad()
    def extract_like(self, arch: Architecture,
                     values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Slice per-parameter tensors shaped like the supernet's (e.g. Adagrad accumulators)
        as :meth:`extract` slices the weights.

        Args:
            arch: The architecture.
            values: Supernet parameter name -> tensor of that parameter's shape; parameters
                not named count as zeros.

        Returns:
            The standalone model's parameter name -> its slice of ``values``.

        Raises:
            ConfigError: an unknown name or a wrong shape.
        """
        params = dict(self.named_parameters())
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise ConfigError("values", f"{unknown[0]!r} is not a supernet parameter")
        saved = {name: p.data for name, p in params.items()}
        try:
            for name, p in params.items():
                value = values.get(name)
                if value is not None and value.shape != p.shape:
                    raise ConfigError(name, f"shape {tuple(value.shape)} is not the "
                                            f"parameter's {tuple(p.shape)}")
                # a worker's sums come from a file on the CPU, its supernet is on the GPU
                p.data = torch.zeros_like(p) if value is None else value.to(p)
            model = self.extract(arch)
        finally:
            for name, data in saved.items():
                params[name].data = data
        return {name: t.detach() for name, t in model.named_parameters()}

    # -- parameter groups -----------------------------------------------------------------
    def active_modules(self, arch: Architecture) -> tuple[str, ...]:
        """``module_key`` of every elastic op ``arch`` runs."""
        return self.plan(arch).modules

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the embedding table."""
        table = self.embedding.table.weight
        return [p for p in self.parameters() if p is not table]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.embedding.table.weight]

    def extra_repr(self) -> str:
        return (f"space={self.space.name!r}, schema={self.schema.name!r}, "
                f"max_slot={self.layout.max_slot}")
