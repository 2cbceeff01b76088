"""Fixed-shape execution of a :class:`~ranknas.supernet.Supernet`: the path is data.

``supernet(dense, sparse, arch)`` slices its weights per architecture, so every path runs other
kernels at other shapes and neither ``torch.compile`` nor a CUDA graph can capture a step. Here
every architecture of a space runs the *same* kernels at the *same* shapes, on the supernet's
own parameters (no copies), and the architecture enters only as two flat tensors
(:class:`PathTensors`: 0/1 selectors, width masks, fixed-length gather indices):

    path = encode(supernet, arch)                      # cached per arch_id
    logits = masked_forward(supernet, dense, sparse, path)   # == supernet(dense, sparse, arch)

Design ("fixed slots", not "mask every candidate"):

- **Values** are kept in a natural padded form: each block's output at its widest size
  (``SpaceLayout.bound``: ``[B, U]`` features or ``[B, U, E]`` fields), zeros beyond the
  architecture's width. A block's value is ``sum_op sel_op * out_op`` over its candidate ops
  (and stacked layers: one selector per (op, depth)).
- **Inputs.** A port with several candidate sources concatenates their padded forms (plus one
  zero column) and gathers the merged input, *in merged order*, into a fixed ``[B, bound]``
  with a per-architecture index (``bound``: the widest merged input, e.g. 4 of 7 candidates in
  ``nasrec``); padding points at the zero column. A single-source port uses the source as is,
  times a 0/1 "present" scalar. Merged order means every order-sensitive op (dot-product pairs,
  position-indexed binary ops, pass-through concatenations) sees what the sliced path sees.
- **Weights** are indexed by storage position, as in the sliced path: a port's weight columns
  are ``W[:, :bound]`` when they never move (one non-pass-through source), else
  ``W.index_select(1, cols)`` with the plan's storage positions padded to ``bound`` (a padded
  column meets a zero input). Rows are always the widest; a width mask zeroes the rest and
  LayerNorms normalise over the active features only (masked mean / variance).
- **Ops**: every candidate op of every block runs (:mod:`ranknas.supernet.masked_ops`) and is
  blended by its 0/1 selector; an unselected op reads zeros, so all its gradients are exactly
  zero and Adagrad leaves it unchanged. Shape-dependent branches of the sliced ops (skip a
  projection when ``P == W``, ``K == N``, ...) are both computed and blended.

Why gather into slots rather than masking the concatenation of every candidate (NASRec's own
supernet): the dense op of ``nasrec`` block ``k`` can read any of ``k`` earlier outputs of up
to 1024 features; the concatenation of all candidates has 13 + 1024 (k-1) features (6157 at
block 7), the 4-slot merged input at most 4096. Over the 7 blocks that is 18.5k instead of
21.6k input features for ``linear-2d`` alone (-15%), and the gathers (activations ``B x bound``,
weights ``W_max x bound`` per step) are memory-bound and small next to the matmuls.

Cost (Criteo shapes: 13 dense, 26 fields, E=16; ``nasrec_full``; forward matmul FLOPs per
example from ``torch.utils.flop_counter``): the sliced path at the widest widths (linear-2d
1024 reading 4 sources, transformer 64, fm and merge on, every block) is 43 MFLOP; a uniformly
sampled path averages ~3.3 MFLOP (4.4 analytic, element-wise work included). The masked
forward runs every candidate at the widest widths: 103 MFLOP for every path (linear-2d 38,
sigmoid-gating 25, dot-product 18, sum 13, transformer 4, linear-3d 3, merge 2). So a
masked step does ~2.4x the FLOPs of the widest sliced path and ~25-30x those of an average
one, traded for one compiled graph and one CUDA graph (no per-path launches or recompiles).
The largest saving left: the four dense ops of a block all end in ``Linear(., W) + LN(W)``;
one matmul on the selected op's features with selector-blended weights would drop the three
unselected projections (~-39 MFLOP, to ~64).

No Python branch depends on the architecture inside :func:`masked_forward`: loops run over
the *space* (blocks, candidate ops, layers), shapes are fixed per space, and there is no
``.item()``. ``torch.compile(fullgraph=True)`` thus compiles once for every path.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ranknas.errors import ConfigError, InvalidArchitecture
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.ops import Kind, TensorSpec, get_operator
from ranknas.supernet import masked_interaction, masked_ops  # noqa: F401 - register the ops
from ranknas.supernet.layout import PortStorage, Region, module_key, units
from ranknas.supernet.masked_base import (
    MaskedOp,
    PortIn,
    Slot,
    Slots,
    Writer,
    aligned,
    as_kind,
    host_copy,
    masked_class,
    resize,
)
from ranknas.supernet.masked_path import PathNode, PathTensors
from ranknas.supernet.supernet import Supernet

__all__ = ["MaskedProgram", "MaskedSupernet", "encode", "masked_forward", "program"]

_PREV = "#prev"  # the source of a stacked layer's port: the previous layer of its op


@dataclass(frozen=True)
class _Port:
    """A port's static input plan: candidate sources and how the merged input is formed."""

    port: PortIn
    cands: tuple[str, ...]
    offsets: tuple[int, ...]  # start of each candidate in the concatenation (gather only)
    gather: Slot | None  # index [aligned(bound)] into cat(candidates, zero column)
    present: Slot | None  # single source: 0/1


@dataclass(frozen=True)
class _Layer:
    op: MaskedOp
    ports: dict[str, _Port]
    sel: Slot  # 1 when this layer's output is the block's output
    active: Slot  # 1 when the architecture runs this layer (its elastic op is active)
    key: str  # module_key of its elastic op


class MaskedProgram:
    """The fixed-shape program of one supernet's space: static structure plus the slots of
    :class:`PathTensors`. Holds the supernet's elastic modules (not the supernet itself).

    Raises:
        ConfigError: an op of the space has no fixed-shape form.
    """

    def __init__(self, supernet: Supernet, cache_size: int | None = None) -> None:
        self.layout, self.dim = supernet.layout, supernet.embedding_dim
        self.cache_size = cache_size or supernet.plan_cache_size
        self.slots = Slots()
        self.blocks: list[tuple[str, dict[str, list[_Layer]]]] = []
        for block in supernet.space.graph.blocks():
            chains: dict[str, list[_Layer]] = {}
            for name in block.ops:
                chain = []
                for k, shape in enumerate(self.layout.layers[(block.id, name)]):
                    ports = {p: self._port(p, s, k == 0) for p, s in shape.ports.items()}
                    module = supernet.elastic[module_key(block.id, name, k)]
                    op = masked_class(name)(module, {p: v.port for p, v in ports.items()},
                                            self.slots)
                    if get_operator(name).out_kind is not op.out_kind:  # pragma: no cover
                        raise ConfigError("masked", f"{name}: output kind mismatch")
                    chain.append(_Layer(op, ports, self.slots.f(1), self.slots.f(1),
                                        module_key(block.id, name, k)))
                chains[name] = chain
            self.blocks.append((block.id, chains))
        self.head = self._port("head", self.layout.head, True)
        self._paths: OrderedDict[str, PathTensors] = OrderedDict()
        self._scratch: Writer | None = None  # reused path buffers (CUDA paths copy them)

    def _port(self, name: str, storage: PortStorage, first: bool) -> _Port:
        cands = tuple(storage.slots) if first else (_PREV,)
        only: Region = next(iter(storage.slots.values()))[1]
        fixed = len(cands) == 1 and not only.composites and only.size >= storage.bound
        span = aligned(storage.bound)  # the segmented step may read up to this
        # padding meets zeros: distinct columns spread its gradient's (zero) atomic adds
        cols = None if fixed else self.slots.i(span, [i % max(storage.size, 1)
                                                      for i in range(span)])
        port = PortIn(name, storage.kind, storage.bound, cols)
        if len(cands) == 1:
            return _Port(port, cands, (0,), None, self.slots.f(1))
        sizes = [self.layout.bound(c, storage.kind) for c in cands]
        offsets = tuple(sum(sizes[:i]) for i in range(len(sizes) + 1))
        return _Port(port, cands, offsets[:-1], self.slots.i(span, offsets[-1]), None)

    def active_slots(self) -> dict[str, Slot]:
        """``module_key`` -> its 0/1 "the path runs it" slot (e.g. to gate weight decay)."""
        return {layer.key: layer.active for _, chains in self.blocks
                for chain in chains.values() for layer in chain}

    # -- encoding --------------------------------------------------------------------------
    def encode(self, supernet: Supernet, arch: Architecture) -> PathTensors:
        """``arch`` as :class:`PathTensors` on the supernet's device (cached, LRU by
        ``arch_id``).

        Raises:
            InvalidArchitecture: ``arch`` is not a buildable member of the space.
        """
        device = supernet.head_bias.device
        hit = self._paths.get(arch.arch_id)
        if hit is not None and hit.floats.device == device:
            self._paths.move_to_end(arch.arch_id)
            return hit
        # on CUDA the buffers are copied (pinned) below, so one scratch writer serves every
        # path; on the CPU the path keeps them
        if device.type != "cuda":
            w = Writer(self.slots)
        elif self._scratch is None or self._scratch.floats.size != len(self.slots.floats):
            w = self._scratch = Writer(self.slots)
        else:
            w = self._scratch.reset()
        nodes, head = self.write(supernet, arch, w)
        return self.adopt(PathTensors(arch.arch_id, *w.tensors(), nodes, head), device)

    def adopt(self, path: PathTensors, device: torch.device) -> PathTensors:
        """Cache ``path``, encoded on the host (here or by a
        :class:`~ranknas.supernet.prefetch.PathPrefetcher`), on ``device``; returns it there.
        On CUDA its tensors are copied; elsewhere it keeps them."""
        if device.type == "cuda":  # pinned + async: the host does not wait for queued steps
            path = dataclasses.replace(
                path, floats=host_copy(path.floats, pin=True).to(device, non_blocking=True),
                ints=host_copy(path.ints, pin=True).to(device, non_blocking=True))
        self._paths[path.arch_id] = path
        self._paths.move_to_end(path.arch_id)
        if len(self._paths) > self.cache_size:
            self._paths.popitem(last=False)
        return path

    def write(self, supernet: Supernet, arch: Architecture,
              w: Writer) -> tuple[tuple[PathNode, ...], int]:
        """Write ``arch``'s path into ``w`` (host memory only); returns its
        :attr:`PathTensors.nodes` and ``head_width``.

        Raises:
            InvalidArchitecture: ``arch`` is not a buildable member of the space.
        """
        pos = supernet.positions(arch)  # CPU only: no host-device sync while training
        graph = pos.graph
        specs = {**graph.input_specs, **{n.key: n.out for n in graph.nodes}}
        chains = dict(self.blocks)
        depth: dict[str, int] = {}
        nodes = []
        for node, ports in zip(graph.nodes, pos.ports, strict=True):
            k = depth[node.block] = depth.get(node.block, -1) + 1
            layer = chains[node.block][node.op][k]
            widths = dict.fromkeys(layer.ports, 0)
            for name, sources in node.ports:
                srcs = (_PREV,) if k else sources
                widths[name] = self._encode_port(w, layer.ports[name], srcs, specs,
                                                 ports[name][1])
            layer.op.encode(w, node)
            w.flag(layer.sel, node.key == node.block)
            w.flag(layer.active, True)
            nodes.append(PathNode(node.block, node.op, k, node.key == node.block,
                                  tuple(widths.values()), node.width,
                                  tuple(bool(w.floats[f.offset]) for f in layer.op.branches)))
        head = self._encode_port(w, self.head, graph.output_sources, specs, pos.head)
        return tuple(nodes), head

    def _encode_port(self, w: Writer, port: _Port, sources: tuple[str, ...],
                     specs: dict[str, TensorSpec], cols: object) -> int:
        """Write one port's gather index, presence and weight columns; returns its merged
        width (port units; the bound for a stacked layer's port)."""
        p = port.port
        if port.gather is None:
            if sources != port.cands:
                raise InvalidArchitecture(p.name, f"sources {sources} are not {port.cands}")
            w.flag(port.present, True)
            width = p.bound if sources == (_PREV,) else units(specs[sources[0]], p.kind,
                                                               self.dim)
        else:
            idx = []
            for src in sources:
                if src not in port.cands:
                    raise InvalidArchitecture(src, f"not a candidate of port {p.name!r}")
                n = units(specs[src], p.kind, self.dim)
                idx.append(np.arange(n) + port.offsets[port.cands.index(src)])
            merged = np.concatenate(idx)
            if merged.size > p.bound:
                raise InvalidArchitecture(p.name, f"merged input {merged.size} > {p.bound}")
            w.prefix(port.gather, merged)  # the rest keeps the default: the zero column
            width = merged.size
        if p.cols is not None:  # padding keeps its default (distinct columns: _port)
            w.prefix(p.cols, np.arange(cols.start, cols.stop) if isinstance(cols, slice)
                     else cols)
        return min(width, p.bound)

    # -- running ---------------------------------------------------------------------------
    def forward(self, supernet: Supernet, dense: torch.Tensor, sparse: torch.Tensor,
                floats: torch.Tensor, ints: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` from dense ``[B, D]``, sparse ids ``[B, F]`` and a path's tensors."""
        return self.forward_embedded(supernet, dense, supernet.embedding(sparse), floats, ints)

    def forward_embedded(self, supernet: Supernet, dense: torch.Tensor, emb: torch.Tensor,
                         floats: torch.Tensor, ints: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` from looked-up embeddings ``emb [B, F, E]``."""
        path = (floats, ints)
        dim = self.dim
        values = {"dense": [(None, dense)], "sparse": [(None, emb)]}
        forms: dict[tuple[str, Kind], torch.Tensor] = {}
        cats: dict[tuple[tuple[str, ...], Kind], torch.Tensor] = {}

        def form(key: str, kind: Kind) -> torch.Tensor:
            if (key, kind) not in forms:
                size = self.layout.bound(key, kind)
                parts = [resize(as_kind(out, kind, dim), size) if sel is None else
                         sel.view(path) * resize(as_kind(out, kind, dim), size)
                         for sel, out in values[key]]
                forms[(key, kind)] = parts[0] if len(parts) == 1 else sum(parts)
            return forms[(key, kind)]

        def port_input(port: _Port, prev: torch.Tensor | None) -> torch.Tensor:
            p = port.port
            if port.gather is None:
                src = prev if port.cands == (_PREV,) else form(port.cands[0], p.kind)
                return resize(as_kind(src, p.kind, dim), p.bound) * port.present.view(path)
            key = (port.cands, p.kind)
            if key not in cats:
                parts = [form(c, p.kind) for c in port.cands]
                parts.append(torch.zeros_like(parts[0].narrow(1, 0, 1)))
                cats[key] = torch.cat(parts, dim=1)
            return cats[key].index_select(1, port.gather.view(path)[:p.bound])

        for block, chains in self.blocks:
            outs = values[block] = []
            for chain in chains.values():
                prev = None
                for layer in chain:
                    xs = {n: port_input(p, prev) for n, p in layer.ports.items()}
                    prev = layer.op.forward(xs, path)
                    outs.append((layer.sel, prev))
        x = port_input(self.head, None)
        weight = self.head.port.take(supernet.head_weight, 1, path)
        return F.linear(x, weight, supernet.head_bias).squeeze(-1)


_T = TypeVar("_T")
_PROGRAMS: weakref.WeakKeyDictionary[Supernet, MaskedProgram] = weakref.WeakKeyDictionary()


def per_supernet(cache: weakref.WeakKeyDictionary[Supernet, _T], supernet: Supernet,
                 make: Callable[[Supernet], _T]) -> _T:
    """``cache[supernet]``, made by ``make(supernet)`` on first use (dropped with the
    supernet)."""
    value = cache.get(supernet)
    if value is None:
        value = cache[supernet] = make(supernet)
    return value


def program(supernet: Supernet) -> MaskedProgram:
    """The (cached) fixed-shape program of ``supernet``."""
    return per_supernet(_PROGRAMS, supernet, MaskedProgram)


def encode(supernet: Supernet, arch: Architecture) -> PathTensors:
    """``arch`` as fixed-size tensors for :func:`masked_forward` (cached per ``arch_id``)."""
    return program(supernet).encode(supernet, arch)


def masked_forward(supernet: Supernet, dense: torch.Tensor, sparse: torch.Tensor,
                   path: PathTensors) -> torch.Tensor:
    """Logits ``[B]`` of ``path``'s architecture from dense ``[B, D]`` and sparse ids
    ``[B, F]``: equal to ``supernet(dense, sparse, arch)``, at shapes fixed per space."""
    return program(supernet).forward(supernet, dense, sparse, path.floats, path.ints)


class MaskedSupernet(nn.Module):
    """``supernet`` (a child module: the same parameters) run at fixed shapes:
    ``forward(dense [B, D], sparse [B, F], floats, ints) -> logits [B]``, the path tensors
    given apart so that ``torch.compile`` / CUDA graphs see plain tensor inputs."""

    def __init__(self, supernet: Supernet) -> None:
        super().__init__()
        self.supernet = supernet
        self.program = program(supernet)

    def encode(self, arch: Architecture) -> PathTensors:
        return self.program.encode(self.supernet, arch)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor, floats: torch.Tensor,
                ints: torch.Tensor) -> torch.Tensor:
        return self.program.forward(self.supernet, dense, sparse, floats, ints)
