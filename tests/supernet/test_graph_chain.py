"""GraphChain: captured CUDA graphs joined into one launch, built in a worker thread."""

from __future__ import annotations

import pytest
import torch

from ranknas.supernet.graph_chain import GraphChain, GraphChainError

CUDA = torch.cuda.is_available()


@pytest.mark.skipif(CUDA, reason="checks the error where CUDA is missing")
def test_without_cuda_it_says_why():
    with pytest.raises(GraphChainError, match="CUDA"):
        GraphChain()


def _captured(x: torch.Tensor, ops: list) -> list[torch.cuda.CUDAGraph]:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside a capture, as torch asks
        for op in ops:
            op(x.clone())
    torch.cuda.current_stream().wait_stream(side)
    graphs = []
    for op in ops:
        g = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.cuda.graph(g):
            op(x)
        graphs.append(g)
    return graphs


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_a_joined_launch_runs_the_graphs_in_order():
    x = torch.arange(4096, dtype=torch.float32, device="cuda")
    start = x.clone()
    # order matters: (x + 1) * 2 - 3 is not (x * 2 + 1) - 3
    graphs = _captured(x, [lambda t: t.add_(1.0), lambda t: t.mul_(2.0),
                           lambda t: t.sub_(3.0).relu_()])
    x.copy_(start)
    for g in graphs:
        g.replay()
    want = x.clone()
    chain = GraphChain()
    try:
        x.copy_(start)
        chain.launch(chain.submit(graphs).result(), torch.cuda.current_stream())
        assert torch.equal(x, want)
        # a dropped chain is freed once joined; the graphs stay usable one by one
        chain.discard(chain.submit(graphs))
        x.copy_(start)
        for g in graphs:
            g.replay()
        assert torch.equal(x, want)
    finally:
        chain.close()


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_a_failed_driver_call_is_named():
    chain = GraphChain()
    try:
        with pytest.raises(GraphChainError, match="cuGraphAddChildGraphNode failed"):
            chain._pool.submit(chain._join, [0]).result()  # no graph at 0
    finally:
        chain.close()
