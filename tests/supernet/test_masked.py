"""Fixed-shape (masked) supernet execution == the sliced supernet, forward and gradients; one
kernel sequence at one set of shapes for every path; the masked training step."""

from __future__ import annotations

import random

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ranknas.errors import ConfigError
from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import load_space
from ranknas.supernet import Supernet
from ranknas.supernet.masked import MaskedSupernet, encode, masked_forward, program
from ranknas.supernet.masked_base import FixedPath, Slot, Writer, branch
from ranknas.supernet.masked_step import MaskedStep

SPACES = ("dlrm", "nasrec_small", "nasrec_full")
SCHEMA = DataSchema(4, (30, 20, 10, 50, 7), "tiny")
B = 8
N_ARCHS = 10


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """|a - b| <= tol, relative to the scale (nasrec's pairwise products reach ~1e3)."""
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(B, SCHEMA.num_dense, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (B,), generator=gen)
                          for c in SCHEMA.cardinalities], dim=1)
    return dense, sparse, torch.randint(0, 2, (B,), generator=gen).float()


@pytest.fixture(scope="module")
def supernets():
    built: dict[str, Supernet] = {}

    def get(name: str) -> Supernet:
        if name not in built:
            built[name] = Supernet(load_space(name), SCHEMA, seed=0).train()
        return built[name]

    yield get
    built.clear()


def _grads(supernet: Supernet, fn, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    for p in supernet.parameters():
        p.grad = None
    F.binary_cross_entropy_with_logits(fn(), labels).backward()
    out = {}
    for name, p in supernet.named_parameters():
        g = torch.zeros_like(p) if p.grad is None else p.grad
        out[name] = g.to_dense() if g.is_sparse else g
    return out


@pytest.mark.parametrize("name", SPACES)
def test_forward_and_grads_match_sliced(name, supernets, data):
    _match_sliced(supernets(name), data, N_ARCHS)


def test_inputs_past_max_slot_wrap_as_sliced(data):
    """sigmoid-gating and sum inputs wider than ``max_slot`` reuse its position-indexed
    weights modulo it, as the sliced op does."""
    supernet = Supernet(load_space("nasrec_full"), SCHEMA, seed=0, max_slot=16).train()
    _match_sliced(supernet, data, 4)
    rng = random.Random(7)  # _match_sliced's architectures
    graphs = [supernet.space.materialize(supernet.space.sample(rng), SCHEMA) for _ in range(4)]
    assert any(max(spec.width for _, spec in node.in_specs) > 16 for graph in graphs
               for node in graph.nodes if node.op in ("sigmoid-gating", "sum"))


def _match_sliced(supernet: Supernet, data: tuple, n_archs: int) -> None:
    dense, sparse, labels = data
    rng = random.Random(7)
    for _ in range(n_archs):
        arch = supernet.space.sample(rng)
        path = encode(supernet, arch)
        want = _grads(supernet, lambda a=arch: supernet(dense, sparse, a), labels)
        got = _grads(supernet, lambda p=path: masked_forward(supernet, dense, sparse, p), labels)
        with torch.no_grad():
            assert _close(masked_forward(supernet, dense, sparse, path),
                          supernet(dense, sparse, arch)), arch.arch_id
        active = set(supernet.active_modules(arch))
        for key, g in got.items():
            assert _close(g, want[key]), f"{arch.arch_id}: grad of {key}"
            module = key.split(".")[1] if key.startswith("elastic.") else None
            if module is not None and module not in active:
                assert not g.any(), f"unselected {key} got a gradient"


def test_path_tensors_are_fixed_and_cached(supernets):
    supernet = supernets("nasrec_full")
    rng = random.Random(1)
    paths = [encode(supernet, supernet.space.sample(rng)) for _ in range(5)]
    assert len({(p.floats.shape, p.ints.shape) for p in paths}) == 1
    arch = supernet.space.sample(rng)
    assert encode(supernet, arch) is encode(supernet, arch)


def test_a_branch_runs_one_side_only_where_the_path_fixes_it():
    flag = Slot(1, 1)
    path = (torch.tensor([0.0, 1.0]), torch.zeros(1, dtype=torch.long))
    calls = []

    def side(name: str, value: float):
        return lambda: calls.append(name) or torch.full((2,), value)

    assert branch(path, flag, side("on", 1.0), side("off", 2.0)).tolist() == [1.0, 1.0]
    assert calls == ["on", "off"]  # a plain path: both sides, blended
    calls.clear()
    fixed = FixedPath(path, {flag: False})  # the host's value wins over the buffer's
    assert branch(fixed, flag, side("on", 1.0), side("off", 2.0)).tolist() == [2.0, 2.0]
    assert calls == ["off"] and fixed[0] is path[0]
    calls.clear()
    assert branch(FixedPath(path, {}), flag, side("on", 1.0), side("off", 2.0))[0] == 1.0
    assert calls == ["on", "off"]  # a flag the path does not fix


def test_path_nodes_carry_their_branch_flags(supernets):
    supernet = supernets("nasrec_full")
    prog = program(supernet)
    layers = {(b, op, k): layer for b, chains in prog.blocks for op, chain in chains.items()
              for k, layer in enumerate(chain)}
    rng = random.Random(2)
    seen = set()
    for _ in range(20):
        path = encode(supernet, supernet.space.sample(rng))
        for node in path.nodes:
            flags = layers[(node.block, node.op, node.k)].op.branches
            assert len(node.branches) == len(flags)
            for flag, on in zip(flags, node.branches, strict=True):
                assert path.floats[flag.offset].item() == float(on)
                seen.add((node.op, on))
    assert {("fm", True), ("dot-product", True), ("dense-to-sparse", True)} <= seen


def test_weight_column_padding_names_distinct_columns(supernets):
    """Padding meets zero inputs, so any column serves; distinct ones keep the backward's
    zero adds from piling onto one column's atomics."""
    supernet = supernets("nasrec_full")
    prog = program(supernet)
    _, ints = prog.slots.defaults()  # what a path's padding keeps
    checked = 0
    for block, chains in prog.blocks:
        for op, chain in chains.items():
            for k, layer in enumerate(chain):
                storage = prog.layout.layers[(block, op)][k].ports
                for name, p in layer.ports.items():
                    if p.port.cols is None:
                        continue
                    cols = p.port.cols.view((None, ints)).tolist()
                    size = storage[name].size  # the weight's columns
                    assert max(cols) < size
                    assert len(set(cols)) == min(len(cols), size), (block, op, name)
                    checked += 1
    assert checked


def test_a_reset_writer_encodes_like_a_fresh_one(supernets):
    # CUDA encodings reuse one writer (the path is copied off it): a reset must leave no
    # trace of the previous path
    supernet = supernets("nasrec_full")
    prog = program(supernet)
    rng = random.Random(2)
    first, second = supernet.space.sample(rng), supernet.space.sample(rng)
    reused = Writer(prog.slots)
    prog.write(supernet, first, reused)
    floats, ints = reused.floats, reused.ints
    prog.write(supernet, second, reused.reset())
    fresh = Writer(prog.slots)
    prog.write(supernet, second, fresh)
    assert reused.floats is floats and reused.ints is ints  # the same buffers
    assert (reused.floats == fresh.floats).all() and (reused.ints == fresh.ints).all()


class _Trace(TorchDispatchMode):
    """Records (op, output shapes) of every kernel the forward and backward run."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, tuple | list) else (out,)
        self.ops.append((str(func), tuple(tuple(t.shape) for t in flat
                                          if isinstance(t, torch.Tensor))))
        return out


@pytest.mark.parametrize("name", ["dlrm", "nasrec_full"])
def test_same_kernels_and_shapes_for_every_path(name, supernets, data):
    supernet = supernets(name)
    dense, sparse, labels = data
    rng = random.Random(2)
    traces = []
    for _ in range(3):
        path = encode(supernet, supernet.space.sample(rng))
        with _Trace() as trace:
            loss = F.binary_cross_entropy_with_logits(
                masked_forward(supernet, dense, sparse, path), labels)
            loss.backward()
        traces.append(trace.ops)
    supernet.zero_grad(set_to_none=True)
    assert traces[0] == traces[1] == traces[2]


def test_compiles_once_for_every_path(supernets, data):
    supernet = supernets("nasrec_small")
    dense, sparse, _ = data
    model = MaskedSupernet(supernet)
    assert {id(p) for p in model.parameters()} == {id(p) for p in supernet.parameters()}
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    rng = random.Random(3)
    torch._dynamo.reset()
    try:
        for i in range(5):
            arch = supernet.space.sample(rng)
            path = model.encode(arch)
            with torch._dynamo.config.patch(error_on_recompile=i > 0), torch.no_grad():
                got = compiled(dense, sparse, path.floats, path.ints)
                assert _close(got, supernet(dense, sparse, arch))
    finally:
        torch._dynamo.reset()


def _copy(supernet: Supernet) -> Supernet:
    twin = Supernet(supernet.space, SCHEMA, seed=0).train()
    twin.load_state_dict(supernet.state_dict())
    return twin


@pytest.mark.parametrize(("name", "compiled"), [("nasrec_full", False), ("dlrm", True)])
def test_masked_step_trains_only_the_selected_ops(name, compiled, supernets, data):
    supernet = _copy(supernets(name))
    dense, sparse, labels = data
    step = MaskedStep(supernet, lr=0.05, weight_decay=0.01, compile=compiled, backend="eager")
    rng = random.Random(4)
    for _ in range(3):
        arch = supernet.space.sample(rng)
        before = {k: p.detach().clone() for k, p in supernet.named_parameters()}
        loss = step(dense, sparse, labels, arch)
        assert torch.isfinite(loss)
        active = set(supernet.active_modules(arch))
        moved = set()
        for key, p in supernet.named_parameters():
            if key.startswith("elastic.") and not torch.equal(p, before[key]):
                moved.add(key.split(".")[1])
        assert moved and moved <= active
        table = supernet.embedding.table.weight
        rows = (table != before["embedding.table.weight"]).any(1).nonzero().flatten()
        assert set(rows.tolist()) <= set((sparse + supernet.embedding.offsets).flatten().tolist())


def test_masked_step_equals_sliced_adagrad(supernets, data):
    """One step == torch.optim.Adagrad (dense) + sparse Adagrad (table) on the sliced path.

    A large eps keeps Adagrad's first step (``lr * g / (|g| + eps)``) from turning rounding
    noise on near-zero gradients into ``+-lr``."""
    dense, sparse, labels = data
    ref = _copy(supernets("nasrec_small"))
    masked = _copy(ref)
    arch = ref.space.sample(random.Random(5))
    opts = [torch.optim.Adagrad(ref.dense_parameters(), lr=0.05, eps=0.1),
            torch.optim.Adagrad(ref.sparse_parameters(), lr=0.05, eps=0.1)]
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    F.binary_cross_entropy_with_logits(ref(dense, sparse, arch), labels).backward()
    for opt in opts:
        opt.step()
    MaskedStep(masked, lr=0.05, eps=0.1)(dense, sparse, labels, arch)
    for (key, p), q in zip(ref.named_parameters(), masked.parameters(), strict=True):
        assert _close(q, p), key


def test_options_are_validated(supernets):
    supernet = supernets("dlrm")
    with pytest.raises(ConfigError):
        MaskedStep(supernet, optimizer="adam")
    with pytest.raises(ConfigError):
        MaskedStep(supernet, precision="fp8")
    with pytest.raises(ConfigError):
        MaskedStep(supernet, cuda_graph=True)
