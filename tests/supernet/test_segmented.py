"""Segmented execution (only the path's ops, each at fixed shapes) == the sliced supernet,
forward and gradients; the segmented training step == the masked one; CUDA graphs per segment
== the same segments run eagerly."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ranknas.errors import ConfigError
from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import load_space
from ranknas.spaces.graph import AnyOf, Block, OperatorGraph
from ranknas.spaces.ops import OpContext
from ranknas.spaces.space import SearchSpace
from ranknas.supernet import MaskedStep, Supernet, SupernetTrainConfig, fused_encoder
from ranknas.supernet.masked import encode, program
from ranknas.supernet.segmented import segmented, segmented_forward
from ranknas.supernet.segmented_step import SegmentedStep

SPACES = ("dlrm", "nasrec_small", "nasrec_full")
SCHEMA = DataSchema(4, (30, 20, 10, 50, 7), "tiny")
B = 8


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """|a - b| <= tol, relative to the scale (nasrec's pairwise products reach ~1e3)."""
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def _data(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(B, SCHEMA.num_dense, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (B,), generator=gen)
                          for c in SCHEMA.cardinalities], dim=1)
    labels = torch.randint(0, 2, (B,), generator=gen).float()
    return dense.to(device), sparse.to(device), labels.to(device)


def _grads(supernet: Supernet, fn, labels: torch.Tensor) -> dict[str, torch.Tensor | None]:
    for p in supernet.parameters():
        p.grad = None
    F.binary_cross_entropy_with_logits(fn(), labels).backward()
    return {name: None if p.grad is None else
            (p.grad.to_dense() if p.grad.is_sparse else p.grad.clone())
            for name, p in supernet.named_parameters()}


def segmented_forward_embedded(supernet: Supernet, dense: torch.Tensor, emb: torch.Tensor,
                               arch) -> torch.Tensor:
    prog = segmented(supernet)
    return prog.forward_embedded(supernet, dense, emb, prog.encode(supernet, arch))


def _twin(supernet: Supernet) -> Supernet:
    twin = Supernet(supernet.space, supernet.schema, seed=0).to(supernet.head_bias.device)
    twin.load_state_dict(supernet.state_dict())
    return twin.train()


@pytest.mark.parametrize("name", SPACES)
def test_forward_and_grads_match_sliced(name):
    supernet = Supernet(load_space(name), SCHEMA, seed=0).train()
    dense, sparse, labels = _data()
    rng = random.Random(7)
    for _ in range(10):
        arch = supernet.space.sample(rng)
        want = _grads(supernet, lambda a=arch: supernet(dense, sparse, a), labels)
        got = _grads(supernet, lambda a=arch: segmented_forward(supernet, dense, sparse, a),
                     labels)
        with torch.no_grad():
            assert _close(segmented_forward(supernet, dense, sparse, arch),
                          supernet(dense, sparse, arch)), arch.arch_id
        active = set(supernet.active_modules(arch))
        for key, g in got.items():
            module = key.split(".")[1] if key.startswith("elastic.") else None
            if module is not None and module not in active:
                assert g is None, f"{arch.arch_id}: unselected {key} got a gradient"
            elif want[key] is None:
                assert g is None or not g.any(), key
            else:
                assert _close(g, want[key]), f"{arch.arch_id}: grad of {key}"


def test_a_moved_supernet_drops_its_runs():
    """Captured graphs read the parameters' old memory after ``.to()``: a step's segment runs
    and buffers are rebuilt when the parameters' storage changes (on CUDA: see the graph test
    below)."""
    supernet = Supernet(load_space("dlrm"), SCHEMA, seed=0).train()
    step = SegmentedStep(supernet, update=lambda params, grads: None)
    dense, sparse, labels = _data()
    path = encode(supernet, supernet.space.sample(random.Random(2)))
    emb = supernet.embedding(sparse).detach()
    loss, grad = step(dense, emb, labels, path)
    before = dict(step._runs)
    assert before and step(dense, emb, labels, path)[0] == loss
    assert all(step._runs[k] is v for k, v in before.items())  # kept while in place
    supernet.double()  # new parameter memory, as .to(device) gives
    got, got_grad = step(dense.double(), emb.double(), labels, path)
    assert _close(got.float(), loss) and _close(got_grad.float(), grad)
    assert before.keys() == step._runs.keys()
    assert not any(step._runs[k] is v for k, v in before.items())


def test_a_plan_looked_up_ahead_finds_the_runs_its_step_ran():
    """``prepare`` plans a step before it runs by looking its segment runs up (no capture,
    no forward): the runs a step of the same path ran, in forward order, or None while a
    variant it needs is not there yet."""
    supernet = Supernet(load_space("nasrec_full"), SCHEMA, seed=0).train()
    step = SegmentedStep(supernet, update=lambda params, grads: None)
    dense, sparse, labels = _data()
    emb = supernet.embedding(sparse).detach()
    rng = random.Random(4)
    first = encode(supernet, supernet.space.sample(rng))
    step(dense, emb, labels, first)
    buf = step._buffers[B]
    runs, head = step._plan(first, buf, False, run=False)
    assert [r.key for r in runs] == [(n.block, n.op, n.k) for n in first.nodes
                                     if n.block not in step.forms.aliases]
    assert all(r in step._runs.values() for r in [*runs, head])
    count = len(step._runs)
    while (step._plan(path := encode(supernet, supernet.space.sample(rng)), buf, False,
                      run=False)) is not None:
        pass  # a path with a variant not run yet
    assert len(step._runs) == count  # looking up ran and captured nothing
    step(dense, emb, labels, path)
    assert step._plan(path, buf, False, run=False) is not None


# stacked layers; merged inputs; binary ops' inputs wider than max_slot (wrapped)
@pytest.mark.parametrize(("name", "max_slot"), [("dlrm", 2048), ("nasrec_full", 2048),
                                                ("nasrec_full", 16)])
def test_step_gradients_match_autograd(name, max_slot):
    """The segmented step's loss and embedding gradient are autograd's over the whole path;
    a batch of another size (eager, own buffers) too."""
    supernet = Supernet(load_space(name), SCHEMA, seed=0, max_slot=max_slot).train()
    step = SegmentedStep(supernet, update=lambda params, grads: None)  # weights stay put
    dense, sparse, labels = _data()
    rng = random.Random(5)
    for size in (B, B, B // 2):
        arch = supernet.space.sample(rng)
        emb = supernet.embedding(sparse[:size]).detach().requires_grad_()
        want = F.binary_cross_entropy_with_logits(
            segmented_forward_embedded(supernet, dense[:size], emb, arch), labels[:size])
        (want_grad,) = torch.autograd.grad(want, emb)
        loss, grad = step(dense[:size], emb.detach(), labels[:size],
                          encode(supernet, arch))
        assert _close(loss, want.detach()) and _close(grad, want_grad), arch.arch_id
    assert step.graph_batch == B and step.captured == 0
    # no run keeps its autograd graph (saved tensors) past its backward; a published output
    # is not kept at all (a captured one's memory goes back to its layer's pool)
    outs = [(run.kinds, run.out) for run in step._runs.values()]
    assert all(out is None if kinds else out.grad_fn is None for kinds, out in outs)
    assert any(out is None for _, out in outs)


def test_runs_only_the_path_and_caches_encodings():
    supernet = Supernet(load_space("nasrec_full"), SCHEMA, seed=0)
    prog = segmented(supernet)
    assert segmented(supernet) is prog
    arch = supernet.space.sample(random.Random(1))
    path = prog.encode(supernet, arch)
    assert prog.encode(supernet, arch) is path is encode(supernet, arch)
    graph = supernet.space.materialize(arch, SCHEMA)
    assert len(path.nodes) == len(graph.nodes) < len(prog.layers)


@pytest.mark.parametrize("name", SPACES)
def test_segmented_step_equals_masked_step(name):
    """Same math as the masked step (large eps: see test_masked); only the ops the path runs
    move."""
    ref = Supernet(load_space(name), SCHEMA, seed=0).train()
    seg = _twin(ref)
    dense, sparse, labels = _data()
    masked_step = MaskedStep(ref, lr=0.05, eps=0.1)
    seg_step = MaskedStep(seg, lr=0.05, eps=0.1, segmented=True)
    rng = random.Random(4)
    for _ in range(3):
        arch = ref.space.sample(rng)
        before = {k: p.detach().clone() for k, p in seg.named_parameters()}
        assert _close(seg_step(dense, sparse, labels, arch),
                      masked_step(dense, sparse, labels, arch))
        active = set(seg.active_modules(arch))
        moved = {k.split(".")[1] for k, p in seg.named_parameters()
                 if k.startswith("elastic.") and not torch.equal(p, before[k])}
        assert moved and moved <= active
    for (key, p), q in zip(ref.named_parameters(), seg.parameters(), strict=True):
        assert _close(q, p), key


def _dcn_space() -> SearchSpace:
    """DCN whose supernet op holds both full-rank (width None) and low-rank weights: a
    branch. Paths run it low rank (a space's check rejects a None width), so its full-rank
    weight is the side not taken, which must not decay."""
    blocks = [Block("b1", ("dcn-cross",), (None, 4), inputs={"x": AnyOf(("dense",), 1, 1)}),
              Block("b2", ("dcn-cross", "linear-2d"), (4, 8),
                    inputs={"x": AnyOf(("dense", "b1"), 1, 2)})]
    return SearchSpace("dcn_tiny", OperatorGraph(blocks, ("b2",)), OpContext(embedding_dim=8))


@pytest.mark.parametrize("name", [*SPACES, "dcn"])
def test_segmented_step_with_decay_equals_sliced_adagrad(name):
    """Decay as ``torch.optim.Adagrad`` on the sliced path: a parameter the path leaves
    without a gradient (a projection its op skips: a branch the variant does not run) does not
    decay, unlike the masked step's zero gradient."""
    space = _dcn_space() if name == "dcn" else load_space(name)
    ref = Supernet(space, SCHEMA, seed=0).train()
    seg = _twin(ref)
    dense, sparse, labels = _data()
    seg_step = MaskedStep(seg, lr=0.05, eps=0.1, weight_decay=0.01, segmented=True)
    opts = [torch.optim.Adagrad(ref.dense_parameters(), lr=0.05, eps=0.1, weight_decay=0.01),
            torch.optim.Adagrad(ref.sparse_parameters(), lr=0.05, eps=0.1)]
    rng = random.Random(4)
    for _ in range(6 if name == "dcn" else 3):
        arch = ref.space.sample(rng)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(ref(dense, sparse, arch), labels).backward()
        for opt in opts:
            opt.step()
        seg_step(dense, sparse, labels, arch)
        for (key, p), q in zip(ref.named_parameters(), seg.parameters(), strict=True):
            assert _close(q, p), (key, arch.arch_id)


def test_options_are_validated():
    supernet = Supernet(load_space("dlrm"), SCHEMA, seed=0)
    with pytest.raises(ConfigError, match="compile"):
        MaskedStep(supernet, segmented=True, compile=True)
    step = MaskedStep(supernet, segmented=True)
    dense, sparse, labels = _data()
    path = encode(supernet, supernet.space.sample(random.Random(0)))
    with pytest.raises(ConfigError, match="Architecture"):
        step(dense, sparse, labels, path)
    with pytest.raises(ConfigError, match="compile"):
        SupernetTrainConfig(execution="segmented", compile=True)
    with pytest.raises(ConfigError, match="segmented"):
        SupernetTrainConfig(execution="slotted")
    with pytest.raises(ConfigError, match="cuda_graph"):
        SupernetTrainConfig(execution="segmented", cuda_graph=True)
    with pytest.raises(ConfigError, match="width_halvings"):
        SupernetTrainConfig(execution="segmented", width_halvings=-1)


def test_buffers_that_do_not_fit_name_the_fix(monkeypatch):
    """A space whose forms outgrow the device's free memory stops before allocating, with
    the option to change (here: a device with 1 MiB free)."""
    monkeypatch.setattr("ranknas.supernet.segmented_forms._free_bytes", lambda device: 2**20)
    supernet = Supernet(load_space("nasrec_small"), SCHEMA, seed=0)
    step = MaskedStep(supernet, segmented=True)
    dense, sparse, labels = _data()
    with pytest.raises(ConfigError, match=r"supernet\.train\.execution.*execution: sliced"):
        step(dense, sparse, labels, supernet.space.sample(random.Random(0)))
    monkeypatch.setattr("ranknas.supernet.segmented_forms._free_bytes", lambda device: None)
    assert step(dense, sparse, labels, supernet.space.sample(random.Random(0))).isfinite()


def test_pass_through_concats_run_no_segment():
    """NASRec's ``dense_in`` / ``sparse_in`` concats (read whole, as their own kind) run no
    segment: their readers gather the merged input (the step still equals autograd's and
    the masked step: the tests above)."""
    supernet = Supernet(load_space("nasrec_full"), SCHEMA, seed=0).train()
    step = SegmentedStep(supernet, lambda p, g: None)
    assert set(step.forms.aliases) == {f"b{i}.{part}_in" for i in range(2, 8)
                                 for part in ("dense", "sparse")}
    dense, sparse, labels = _data()
    arch = supernet.space.sample(random.Random(2))
    step(dense, supernet.embedding(sparse).detach(), labels, encode(supernet, arch))
    blocks = {run.key[0] for run in step._runs.values()}
    assert blocks and not blocks & set(step.forms.aliases)
    assert not any(source in step.forms.aliases for source, _ in step.forms.ranges)
    dlrm = SegmentedStep(Supernet(load_space("dlrm"), SCHEMA, seed=0), lambda p, g: None)
    assert dlrm.forms.aliases == {}


def test_an_absent_input_of_a_pass_through_concat_reads_zeros():
    """A reader whose port is absent (width 0, ``present`` 0) reads zeros, not the concat's
    input, as in the masked program (NASRec's paths never do this: forced here)."""
    supernet = Supernet(load_space("nasrec_full"), SCHEMA, seed=0).train()
    step = SegmentedStep(supernet, lambda p, g: None)
    dense, sparse, labels = _data()
    path = encode(supernet, supernet.space.sample(random.Random(3)))
    node = next(n for n in path.nodes if n.block.endswith(".sparse") and n.block != "b1.sparse")
    (port,) = step.prog.layers[(node.block, node.op, node.k)].ports.values()
    assert port.cands[0] in step.forms.aliases
    floats = path.floats.clone()
    floats[port.present.offset] = 0.0  # as the masked program reads it; the step: the width
    nodes = tuple(n._replace(widths=(0,)) if n == node else n for n in path.nodes)
    absent = replace(path, arch_id=path.arch_id + "-absent", floats=floats, nodes=nodes)
    emb = supernet.embedding(sparse).detach()
    for p in (path, absent):
        want = F.binary_cross_entropy_with_logits(
            program(supernet).forward_embedded(supernet, dense, emb, p.floats, p.ints), labels)
        assert _close(step(dense, emb, labels, p)[0], want.detach())
    assert not _close(step(dense, emb, labels, absent)[0], step(dense, emb, labels, path)[0])


class _SliceBackwards(TorchDispatchMode):
    """The input sizes of every slice's backward (it zeroes and copies the whole input)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.slice_backward.default:
            self.sizes.append(tuple(args[1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", SPACES)
def test_no_parameter_is_sliced_at_its_widest(name):
    """At the widest widths no parameter is sliced: a slice's backward would zero and copy
    the whole parameter, every step (``masked_base.first``)."""
    supernet = Supernet(load_space(name), SCHEMA, seed=0).train()
    step = SegmentedStep(supernet, lambda p, g: None, halvings=0)
    dense, sparse, labels = (t[:5] for t in _data())  # 5: no parameter has 5 rows
    rng = random.Random(0)
    with _SliceBackwards() as trace:
        for _ in range(4):
            step(dense, supernet.embedding(sparse).detach(), labels,
                 encode(supernet, supernet.space.sample(rng)))
    assert all(size[0] == 5 for size in trace.sizes), trace.sizes


def test_fixed_widths_halve_to_fit():
    step = SegmentedStep(Supernet(load_space("dlrm"), SCHEMA, seed=0), lambda p, g: None)
    assert [step.fit(w, 1024) for w in (0, 100, 256, 257, 600)] == [256, 256, 256, 512, 1024]
    assert step.fit(100, 1100) == 280  # halves rounded up to 8 columns
    assert step.fit(2000, 2061) == 2064  # so is the bound: cuBLAS's aligned kernels
    assert [step.fit(w, 20) for w in (3, 6, 11)] == [5, 10, 20]  # small bounds: no rounding
    step.halvings = 0
    assert step.fit(1, 1024) == 1024


def test_narrow_inputs_and_outputs_run_cut():
    """Merged inputs run at a halved fixed width where they fit (else at their bound rounded
    up to 8), and the sizable ops at fewer fields or features than their widest; the step
    equals the uncut one."""
    nets = [Supernet(load_space("nasrec_full"), SCHEMA, seed=0).train() for _ in range(2)]
    steps = [SegmentedStep(net, lambda p, g: None, halvings=h) for net, h in zip(nets, (0, 2),
                                                                               strict=True)]
    dense, sparse, labels = _data()
    rng = random.Random(6)
    for _ in range(6):
        arch = nets[0].space.sample(rng)
        (loss, grad), (want, want_grad) = [
            step(dense, net.embedding(sparse).detach(), labels, encode(net, arch))
            for net, step in zip(nets[::-1], steps[::-1], strict=True)]
        assert _close(loss, want) and _close(grad, want_grad), arch.arch_id

    def cut(step: SegmentedStep) -> tuple[bool, set[str]]:
        runs = step._runs.values()
        return (any(size < run.ports[name].port.bound
                    for run in runs for name, (size, _, _) in run.sizes.items()),
                {run.key[1] for run in runs if run.out_size is not None})

    assert cut(steps[0]) == (False, set())
    assert cut(steps[1]) == (True, {"dot-product", "fm", "linear-2d", "linear-3d",
                                    "sigmoid-gating", "sum", "transformer"})
    assert any(size > run.ports[name].port.bound  # bound 1028 -> 1032
               for run in steps[0]._runs.values() for name, (size, _, _) in run.sizes.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_graphs_equal_eager_segments(fused, monkeypatch):
    """Graphed segments (captured on first use, replayed on later paths) train as the same
    segments run eagerly, over paths that share segments; another batch size runs eagerly;
    a moved supernet is captured again. ``fused``: the transformer as one op (its kernels)."""
    monkeypatch.setattr(fused_encoder, "ENABLED", fused)
    graphed_net = Supernet(load_space("nasrec_full"), SCHEMA, seed=0).cuda().train()
    eager_net = _twin(graphed_net)
    dense, sparse, labels = _data("cuda")
    opts = {"lr": 0.05, "eps": 0.1, "weight_decay": 0.01, "segmented": True}
    graphed = MaskedStep(graphed_net, cuda_graph=True, **opts)
    eager = MaskedStep(eager_net, **opts)

    def check(arch, size=B, tol=1e-4):
        batch = (dense[:size], sparse[:size], labels[:size])
        assert _close(graphed(*batch, arch), eager(*batch, arch), tol), arch.arch_id
        # two *eager* twins drift apart by up to 2e-4 here (float atomics through a LayerNorm
        # over a few near-equal fields); a graph reading a wrong buffer is off by O(1)
        for (key, p), q in zip(eager_net.named_parameters(), graphed_net.parameters(),
                               strict=True):
            assert _close(q, p, 10 * tol), f"{arch.arch_id}: {key}"

    rng = random.Random(11)
    first = [graphed_net.space.sample(rng) for _ in range(4)]
    for arch in first + [graphed_net.space.sample(rng) for _ in range(8)]:
        check(arch)
        with torch.no_grad():  # the fused attention kernel (CUDA only) against sliced SDPA
            arch = graphed_net.space.sample(rng)
            got = segmented_forward(graphed_net, dense, sparse, arch)
            assert _close(got, graphed_net(dense, sparse, arch), 1e-4), arch.arch_id
    runner = graphed.segments
    captured = runner.captured
    # a layer's variants share one memory pool: the first paths' graphs replay correctly
    # after other variants of their layers were captured into it
    assert 0 < len(runner._pools) < captured and runner.graph_batch == B
    for arch in first:
        check(arch)
    assert runner.captured == captured
    check(arch, B // 2)  # another size runs eagerly
    assert runner.captured == captured
    graphed_net.cpu().cuda()  # new parameter memory: the graphs are captured again
    check(arch)
    assert runner.captured > captured
