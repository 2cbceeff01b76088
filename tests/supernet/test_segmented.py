"""Segmented execution (only the path's ops, each at fixed shapes) == the sliced supernet,
forward and gradients; the segmented training step == the masked one; CUDA graphs per segment
== the same segments run eagerly."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from ranknas.errors import ConfigError
from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import load_space
from ranknas.supernet import MaskedStep, Supernet, SupernetTrainConfig
from ranknas.supernet.masked import encode
from ranknas.supernet.segmented import segmented, segmented_forward

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


def test_a_moved_supernet_drops_its_segments():
    """Captured graphs read the parameters' old memory after ``.to()``: segments are rebuilt
    when the parameters' storage changes (on CUDA: see the graph test below)."""
    supernet = Supernet(load_space("dlrm"), SCHEMA, seed=0)
    dense, sparse, _ = _data()
    arch = supernet.space.sample(random.Random(2))
    with torch.no_grad():
        want = segmented_forward(supernet, dense, sparse, arch)
    prog = segmented(supernet)
    before = dict(prog._segments)
    assert segmented_forward(supernet, dense, sparse, arch) is not None
    assert all(prog._segments[k] is v for k, v in before.items())  # kept while in place
    supernet.double()  # new parameter memory, as .to(device) gives
    with torch.no_grad():
        got = segmented_forward(supernet, dense.double(), sparse, arch)
    assert _close(got.float(), want)
    assert before.keys() == prog._segments.keys()
    assert not any(prog._segments[k] is v for k, v in before.items())


def test_runs_only_the_path_and_caches_encodings():
    supernet = Supernet(load_space("nasrec_full"), SCHEMA, seed=0)
    prog = segmented(supernet)
    assert segmented(supernet) is prog
    arch = supernet.space.sample(random.Random(1))
    path = prog.encode(supernet, arch)
    assert prog.encode(supernet, arch) is path is encode(supernet, arch)
    graph = supernet.space.materialize(arch, SCHEMA)
    assert len(path.nodes) == len(graph.nodes) < len(prog.layers)


@pytest.mark.parametrize("name", ["nasrec_small", "nasrec_full"])
def test_segmented_step_equals_masked_step(name):
    """Same math as the masked step (large eps: see test_masked), decay included; only the
    ops the path runs move."""
    ref = Supernet(load_space(name), SCHEMA, seed=0).train()
    seg = _twin(ref)
    dense, sparse, labels = _data()
    masked_step = MaskedStep(ref, lr=0.05, eps=0.1, weight_decay=0.01)
    seg_step = MaskedStep(seg, lr=0.05, eps=0.1, weight_decay=0.01, segmented=True)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_equal_eager_segments():
    """Graphed segments (captured on first use, replayed on later paths) compute what the
    eager segments compute, forward and gradients, over paths that share segments."""
    supernet = Supernet(load_space("nasrec_full"), SCHEMA, seed=0).cuda().train()
    dense, sparse, labels = _data("cuda")
    eager, graphed = segmented(supernet), segmented(supernet, cuda_graphs=True)
    rng = random.Random(11)
    for _ in range(12):
        arch = supernet.space.sample(rng)

        def run(prog, a=arch):
            return prog.forward_embedded(supernet, dense, supernet.embedding(sparse),
                                         prog.encode(supernet, a))

        want = _grads(supernet, lambda: run(eager), labels)
        got = _grads(supernet, lambda: run(graphed), labels)
        with torch.no_grad():  # the fused attention kernel (CUDA only) against the sliced SDPA
            assert _close(run(eager), supernet(dense, sparse, arch), 1e-4), arch.arch_id
        for key, g in want.items():
            assert (g is None) == (got[key] is None), key
            if g is not None:
                assert _close(got[key], g, 1e-4), f"{arch.arch_id}: grad of {key}"
    captured = graphed.captured
    assert captured > 0 and graphed.graph_batch == B
    half = (dense[:B // 2], sparse[:B // 2], labels[:B // 2])  # another size runs eagerly
    path = graphed.encode(supernet, arch)
    with torch.no_grad():
        got = graphed.forward_embedded(supernet, half[0], supernet.embedding(half[1]), path)
        want = eager.forward_embedded(supernet, half[0], supernet.embedding(half[1]), path)
    assert _close(got, want, 1e-4) and graphed.captured == captured
    supernet.cpu().cuda()  # new parameter memory: the graphs are captured again

    def moved(prog):
        return prog.forward_embedded(supernet, dense, supernet.embedding(sparse), path)

    want = _grads(supernet, lambda: moved(eager), labels)
    got = _grads(supernet, lambda: moved(graphed), labels)
    assert graphed.captured > captured
    for key, g in want.items():
        assert (g is None) == (got[key] is None), key
        if g is not None:
            assert _close(got[key], g, 1e-4), f"after the move: grad of {key}"
