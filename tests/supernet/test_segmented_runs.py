"""A segmented step's runs: kept while the parameters stay in place, looked up ahead
(``prepare``), and captured as CUDA graphs that train as the same segments run eagerly."""

from __future__ import annotations

import random

import pytest
import torch
from segment_cases import SCHEMA, B, batch, close, twin

from ranknas.spaces import load_space
from ranknas.supernet import MaskedStep, Supernet, fused_encoder
from ranknas.supernet.masked import encode
from ranknas.supernet.segmented import segmented_forward
from ranknas.supernet.segmented_step import SegmentedStep


def test_a_moved_supernet_drops_its_runs():
    """Captured graphs read the parameters' old memory after ``.to()``: a step's segment runs
    and buffers are rebuilt when the parameters' storage changes (on CUDA: see the graph test
    below)."""
    supernet = Supernet(load_space("dlrm"), SCHEMA, seed=0).train()
    step = SegmentedStep(supernet, update=lambda params, grads: None)
    dense, sparse, labels = batch()
    path = encode(supernet, supernet.space.sample(random.Random(2)))
    emb = supernet.embedding(sparse).detach()
    loss, grad = step(dense, emb, labels, path)
    before = dict(step._runs)
    assert before and step(dense, emb, labels, path)[0] == loss
    assert all(step._runs[k] is v for k, v in before.items())  # kept while in place
    supernet.double()  # new parameter memory, as .to(device) gives
    got, got_grad = step(dense.double(), emb.double(), labels, path)
    assert close(got.float(), loss) and close(got_grad.float(), grad)
    assert before.keys() == step._runs.keys()
    assert not any(step._runs[k] is v for k, v in before.items())


def test_a_plan_looked_up_ahead_finds_the_runs_its_step_ran():
    """``prepare`` plans a step before it runs by looking its segment runs up (no capture,
    no forward): the runs a step of the same path ran, in forward order, or None while a
    variant it needs is not there yet."""
    supernet = Supernet(load_space("nasrec_full"), SCHEMA, seed=0).train()
    step = SegmentedStep(supernet, update=lambda params, grads: None)
    dense, sparse, labels = batch()
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_graphs_equal_eager_segments(fused, monkeypatch):
    """Graphed segments (captured on first use, replayed on later paths) train as the same
    segments run eagerly, over paths that share segments; another batch size runs eagerly;
    a moved supernet is captured again. ``fused``: the transformer as one op (its kernels)."""
    monkeypatch.setattr(fused_encoder, "ENABLED", fused)
    graphed_net = Supernet(load_space("nasrec_full"), SCHEMA, seed=0).cuda().train()
    eager_net = twin(graphed_net)
    dense, sparse, labels = batch("cuda")
    opts = {"lr": 0.05, "eps": 0.1, "weight_decay": 0.01, "segmented": True}
    graphed = MaskedStep(graphed_net, cuda_graph=True, **opts)
    eager = MaskedStep(eager_net, **opts)

    def check(arch, size=B, tol=1e-4):
        batch = (dense[:size], sparse[:size], labels[:size])
        assert close(graphed(*batch, arch), eager(*batch, arch), tol), arch.arch_id
        # two *eager* twins drift apart by up to 2e-4 here (float atomics through a LayerNorm
        # over a few near-equal fields); a graph reading a wrong buffer is off by O(1)
        for (key, p), q in zip(eager_net.named_parameters(), graphed_net.parameters(),
                               strict=True):
            assert close(q, p, 10 * tol), f"{arch.arch_id}: {key}"

    rng = random.Random(11)
    first = [graphed_net.space.sample(rng) for _ in range(4)]
    for arch in first + [graphed_net.space.sample(rng) for _ in range(8)]:
        check(arch)
        with torch.no_grad():  # the fused attention kernel (CUDA only) against sliced SDPA
            arch = graphed_net.space.sample(rng)
            got = segmented_forward(graphed_net, dense, sparse, arch)
            assert close(got, graphed_net(dense, sparse, arch), 1e-4), arch.arch_id
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
