"""A Rankitect-style low-level space: every layer picks any catalogue op and any inputs."""

from __future__ import annotations

from ranknas.spaces.graph import SHARED_PORT, AnyOf, Block, OperatorGraph
from ranknas.spaces.ops import OpContext
from ranknas.spaces.space import SearchSpace

NUM_LAYERS = 8
MAX_INPUTS = 3
LAYER_OPS = ("linear-2d", "dcn-cross", "dot-product", "fm", "sigmoid-gating", "sum",
             "linear-3d", "transformer")
LAYER_WIDTHS = (16, 32, 64, 128, 256, 512)


def rankitect(num_layers: int = NUM_LAYERS) -> SearchSpace:
    """``num_layers`` low-level layers. Layer ``i`` chooses one op of the catalogue, its width
    and 1..3 of {dense, sparse, layer 0..i-1} as inputs (binary ops also choose a left and a
    right input); the logit reads the last two layers."""
    blocks = []
    for i in range(num_layers):
        cands = ("dense", "sparse", *(f"l{k}" for k in range(i)))
        blocks.append(Block(f"l{i}", LAYER_OPS, LAYER_WIDTHS,
                            inputs={SHARED_PORT: AnyOf(cands, 1, MAX_INPUTS)}))
    output = tuple(f"l{k}" for k in range(max(0, num_layers - 2), num_layers))
    graph = OperatorGraph(blocks, output)
    return SearchSpace("rankitect", graph, OpContext(embedding_dim=16, layernorm=True),
                       description="Rankitect-style: 8 layers, any op of the catalogue, "
                                   "width, any earlier inputs")
