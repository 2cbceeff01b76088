"""NASRec's search spaces (Zhang et al., WWW 2023): NASRec-Full (``xlarge``) and -Small.

Each of the 7 choice blocks reads a dense 2-D and a sparse 3-D tensor and writes both. A block
is spelled here as a handful of graph nodes, so the generic machinery (decisions, shapes, FLOPs,
model building) needs no NASRec special case:

- ``bK.dense_in`` / ``bK.sparse_in``: concatenation of up to 4 earlier outputs (index 0 of
  NASRec's ``dense_idx`` / ``sparse_idx`` is the raw input);
- ``bK.dense``: the dense op; unary ops read ``dense_in``, dot-product reads both ``_in``
  tensors, binary ops (sum, gating) read one ``left`` and one ``right`` earlier output;
- ``bK.sparse``: the sparse op over ``sparse_in``;
- ``bK.fm`` (switch ``bK.fm.on``, NASRec's ``deep_fm``): FM over the sparse output, projected
  to the dense width and added onto the dense output (``bK.dense_out``);
- ``bK.merge`` (switch ``bK.merge.on``, NASRec's ``dense_sparse_interact``): the dense op's
  output projected to 8 fields of E and appended to the sparse output (``bK.sparse_out``).

The logit reads the last block's dense output and its flattened sparse output.
"""

from __future__ import annotations

from ranknas.spaces.graph import AnyOf, Block, Fixed, OneOf, OperatorGraph, WidthTie
from ranknas.spaces.ops import OpContext
from ranknas.spaces.space import SearchSpace

NUM_BLOCKS = 7
DENSE_WIDTHS = (16, 32, 64, 128, 256, 512, 768, 1024)
SPARSE_WIDTHS = (16, 32, 48, 64)
MAX_INPUTS = 4
MERGE_FIELDS = 8  # NASRec's DS_INTERACT_NUM_SPLITS
FULL_DENSE_OPS = ("linear-2d", "dot-product", "sigmoid-gating", "sum")
FULL_SPARSE_OPS = ("transformer", "linear-3d")
SMALL_DENSE_OPS = ("linear-2d", "dot-product")
SMALL_SPARSE_OPS = ("linear-3d",)


def dense_out(k: int) -> str:
    """Node id of block ``k``'s dense output; 0 is the raw dense input (NASRec's index 0)."""
    return "dense" if k == 0 else f"b{k}.dense_out"


def sparse_out(k: int) -> str:
    return "sparse" if k == 0 else f"b{k}.sparse_out"


def nasrec_blocks(dense_ops: tuple[str, ...], sparse_ops: tuple[str, ...],
                  num_blocks: int = NUM_BLOCKS) -> list[Block]:
    blocks: list[Block] = []
    for i in range(1, num_blocks + 1):
        b = f"b{i}"
        dense_cands = tuple(dense_out(k) for k in range(i))
        sparse_cands = tuple(sparse_out(k) for k in range(i))
        blocks += [
            Block(f"{b}.dense_in", ("concat",),
                  inputs={"x": AnyOf(dense_cands, 1, MAX_INPUTS)}),
            Block(f"{b}.sparse_in", ("concat-3d",),
                  inputs={"x": AnyOf(sparse_cands, 1, MAX_INPUTS)}),
            Block(f"{b}.dense", dense_ops, DENSE_WIDTHS, inputs={
                "x": Fixed((f"{b}.dense_in",)),
                "dense": Fixed((f"{b}.dense_in",)),
                "sparse": Fixed((f"{b}.sparse_in",)),
                "left": OneOf(dense_cands),
                "right": OneOf(dense_cands)}),
            Block(f"{b}.sparse", sparse_ops, SPARSE_WIDTHS,
                  inputs={"x": Fixed((f"{b}.sparse_in",))}),
            Block(f"{b}.fm", ("fm",), WidthTie(f"{b}.dense"),
                  inputs={"x": Fixed((f"{b}.sparse",))}, optional=True),
            Block(f"{b}.dense_out", ("add",),
                  inputs={"a": Fixed((f"{b}.dense",)), "b": Fixed((f"{b}.fm",))}),
            Block(f"{b}.merge", ("dense-to-sparse",), (MERGE_FIELDS,),
                  inputs={"x": Fixed((f"{b}.dense",))}, optional=True),
            Block(f"{b}.sparse_out", ("concat-3d",),
                  inputs={"x": Fixed((f"{b}.sparse", f"{b}.merge"))}),
        ]
    return blocks


def nasrec_full() -> SearchSpace:
    """NASRec-Full: dense linear-2d / dot-product / sigmoid-gating / sum, sparse
    transformer / linear-3d."""
    graph = OperatorGraph(nasrec_blocks(FULL_DENSE_OPS, FULL_SPARSE_OPS),
                          (dense_out(NUM_BLOCKS), sparse_out(NUM_BLOCKS)))
    return SearchSpace("nasrec_full", graph, OpContext(embedding_dim=16, layernorm=True),
                       description="NASRec-Full: 7 blocks, 4 dense + 2 sparse ops, dense "
                                   "connectivity, FM and dense-sparse merge switches")


def nasrec_small() -> SearchSpace:
    """NASRec-Small: dense linear-2d / dot-product, sparse linear-3d (EFC)."""
    graph = OperatorGraph(nasrec_blocks(SMALL_DENSE_OPS, SMALL_SPARSE_OPS),
                          (dense_out(NUM_BLOCKS), sparse_out(NUM_BLOCKS)))
    return SearchSpace("nasrec_small", graph, OpContext(embedding_dim=16, layernorm=True),
                       description="NASRec-Small: 7 blocks of linear-2d / dot-product and "
                                   "linear-3d, dense connectivity, FM and merge switches")
