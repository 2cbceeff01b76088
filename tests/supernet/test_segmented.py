"""Segmented execution (only the path's ops, each at fixed shapes) == the sliced supernet,
forward and gradients; the segmented training step == the masked one; CUDA graphs per segment
== the same segments run eagerly (test_segmented_runs.py)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from segment_cases import SCHEMA, B, batch, close, twin
from torch.utils._python_dispatch import TorchDispatchMode

from ranknas.errors import ConfigError
from ranknas.spaces import load_space
from ranknas.spaces.graph import AnyOf, Block, OperatorGraph
from ranknas.spaces.ops import OpContext
from ranknas.spaces.space import SearchSpace
from ranknas.supernet import MaskedStep, Supernet, SupernetTrainConfig
from ranknas.supernet.masked import encode, program
from ranknas.supernet.segmented import segmented, segmented_forward
from ranknas.supernet.segmented_step import SegmentedStep

SPACES = ("dlrm", "nasrec_small", "nasrec_full")


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


@pytest.mark.parametrize("name", SPACES)
def test_forward_and_grads_match_sliced(name):
    supernet = Supernet(load_space(name), SCHEMA, seed=0).train()
    dense, sparse, labels = batch()
    rng = random.Random(7)
    for _ in range(10):
        arch = supernet.space.sample(rng)
        want = _grads(supernet, lambda a=arch: supernet(dense, sparse, a), labels)
        got = _grads(supernet, lambda a=arch: segmented_forward(supernet, dense, sparse, a),
                     labels)
        with torch.no_grad():
            assert close(segmented_forward(supernet, dense, sparse, arch),
                          supernet(dense, sparse, arch)), arch.arch_id
        active = set(supernet.active_modules(arch))
        for key, g in got.items():
            module = key.split(".")[1] if key.startswith("elastic.") else None
            if module is not None and module not in active:
                assert g is None, f"{arch.arch_id}: unselected {key} got a gradient"
            elif want[key] is None:
                assert g is None or not g.any(), key
            else:
                assert close(g, want[key]), f"{arch.arch_id}: grad of {key}"


# stacked layers; merged inputs; binary ops' inputs wider than max_slot (wrapped)
@pytest.mark.parametrize(("name", "max_slot"), [("dlrm", 2048), ("nasrec_full", 2048),
                                                ("nasrec_full", 16)])
def test_step_gradients_match_autograd(name, max_slot):
    """The segmented step's loss and embedding gradient are autograd's over the whole path;
    a batch of another size (eager, own buffers) too."""
    supernet = Supernet(load_space(name), SCHEMA, seed=0, max_slot=max_slot).train()
    step = SegmentedStep(supernet, update=lambda params, grads: None)  # weights stay put
    dense, sparse, labels = batch()
    rng = random.Random(5)
    for size in (B, B, B // 2):
        arch = supernet.space.sample(rng)
        emb = supernet.embedding(sparse[:size]).detach().requires_grad_()
        want = F.binary_cross_entropy_with_logits(
            segmented_forward_embedded(supernet, dense[:size], emb, arch), labels[:size])
        (want_grad,) = torch.autograd.grad(want, emb)
        loss, grad = step(dense[:size], emb.detach(), labels[:size],
                          encode(supernet, arch))
        assert close(loss, want.detach()) and close(grad, want_grad), arch.arch_id
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
    seg = twin(ref)
    dense, sparse, labels = batch()
    masked_step = MaskedStep(ref, lr=0.05, eps=0.1)
    seg_step = MaskedStep(seg, lr=0.05, eps=0.1, segmented=True)
    rng = random.Random(4)
    for _ in range(3):
        arch = ref.space.sample(rng)
        before = {k: p.detach().clone() for k, p in seg.named_parameters()}
        assert close(seg_step(dense, sparse, labels, arch),
                      masked_step(dense, sparse, labels, arch))
        active = set(seg.active_modules(arch))
        moved = {k.split(".")[1] for k, p in seg.named_parameters()
                 if k.startswith("elastic.") and not torch.equal(p, before[k])}
        assert moved and moved <= active
    for (key, p), q in zip(ref.named_parameters(), seg.parameters(), strict=True):
        assert close(q, p), key


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
    seg = twin(ref)
    dense, sparse, labels = batch()
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
            assert close(q, p), (key, arch.arch_id)


def test_options_are_validated():
    supernet = Supernet(load_space("dlrm"), SCHEMA, seed=0)
    with pytest.raises(ConfigError, match="compile"):
        MaskedStep(supernet, segmented=True, compile=True)
    step = MaskedStep(supernet, segmented=True)
    dense, sparse, labels = batch()
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
    dense, sparse, labels = batch()
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
    dense, sparse, labels = batch()
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
    dense, sparse, labels = batch()
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
        assert close(step(dense, emb, labels, p)[0], want.detach())
    assert not close(step(dense, emb, labels, absent)[0], step(dense, emb, labels, path)[0])


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
    dense, sparse, labels = (t[:5] for t in batch())  # 5: no parameter has 5 rows
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
    dense, sparse, labels = batch()
    rng = random.Random(6)
    for _ in range(6):
        arch = nets[0].space.sample(rng)
        (loss, grad), (want, want_grad) = [
            step(dense, net.embedding(sparse).detach(), labels, encode(net, arch))
            for net, step in zip(nets[::-1], steps[::-1], strict=True)]
        assert close(loss, want) and close(grad, want_grad), arch.arch_id

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
