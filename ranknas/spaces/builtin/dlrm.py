"""DLRM (Naumov et al. 2019): bottom MLP, feature interaction, top MLP."""

from __future__ import annotations

from ranknas.spaces.graph import Block, Fixed, OperatorGraph
from ranknas.spaces.ops import OpContext
from ranknas.spaces.space import SearchSpace

MLP_WIDTHS = (64, 128, 256, 512, 1024)
MLP_DEPTHS = (1, 2, 3)


def dlrm() -> SearchSpace:
    """Bottom MLP (width and depth) over dense features; interaction of its output with the
    embeddings by DLRM's pairwise dot product, plain concatenation or DCN-v2 cross layers;
    top MLP over the bottom output and the interaction."""
    blocks = [
        Block("bottom", ("linear-2d",), MLP_WIDTHS, MLP_DEPTHS,
              inputs={"x": Fixed(("dense",))}),
        Block("interaction", ("dot-product", "concat", "dcn-cross"), None, (1, 2, 3), inputs={
            "dense": Fixed(("bottom",)),
            "sparse": Fixed(("sparse",)),
            "x": Fixed(("bottom", "sparse"))}),
        Block("top", ("linear-2d",), MLP_WIDTHS, MLP_DEPTHS,
              inputs={"x": Fixed(("bottom", "interaction"))}),
    ]
    graph = OperatorGraph(blocks, ("top",))
    return SearchSpace("dlrm", graph, OpContext(embedding_dim=16, layernorm=False),
                       description="DLRM: bottom MLP, dot / concat / DCN interaction, top MLP")


def dlrm_default(space: SearchSpace | None = None):
    """The classic DLRM Criteo setting within this space: bottom 512-256-64, dot interaction,
    top 512-256 (the reference every search result is compared with as ΔNE%)."""
    space = space or dlrm()
    return space.canonicalize({
        "bottom.depth": 3, "bottom.width": 512, "bottom.width.1": 256, "bottom.width.2": 64,
        "interaction.op": "dot-product",
        "top.depth": 2, "top.width": 512, "top.width.1": 256})
