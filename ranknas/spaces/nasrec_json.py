"""Import and export NASRec's own architecture JSON (facebookresearch/NasRec).

The format is described in ``shared/nasrec-configs/README.md``: ``micro`` holds each block's
ops, widths and two switches, ``macro`` its input indices (0 = raw input, i = block i).

Two things do not survive a round trip, by design: the *order* of ``dense_idx``/``sparse_idx``
(ranknas keeps inputs as sets in canonical order; a different concatenation order is the same
model up to a permutation of the next layer's weights), and the choices of blocks whose output
never reaches the logit (they change nothing that is computed; export fills them with the
cheapest settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranknas.errors import InvalidArchitecture
from ranknas.spaces.architecture import Architecture
from ranknas.spaces.builtin.nasrec import (
    FULL_DENSE_OPS,
    FULL_SPARSE_OPS,
    NUM_BLOCKS,
    SMALL_DENSE_OPS,
    SMALL_SPARSE_OPS,
    dense_out,
    sparse_out,
)
from ranknas.spaces.space import SearchSpace

#: NASRec's node lists per ``config`` (index = position in ``active_nodes``).
NODE_NAMES = {
    "xlarge": (*FULL_DENSE_OPS, *FULL_SPARSE_OPS),
    "autoctr": (*SMALL_DENSE_OPS, *SMALL_SPARSE_OPS),
}
CONFIG_OF_SPACE = {"nasrec_full": "xlarge", "nasrec_small": "autoctr"}


def _index_of(node: str) -> int:
    return 0 if node in ("dense", "sparse") else int(node.split(".")[0][1:])


def _config(space: SearchSpace) -> str:
    try:
        return CONFIG_OF_SPACE[space.name]
    except KeyError:
        raise InvalidArchitecture("space", f"NASRec JSON exists only for "
                                  f"{', '.join(CONFIG_OF_SPACE)}, not {space.name!r}") from None


def from_nasrec_json(space: SearchSpace, doc: Any, where: str = "nasrec") -> Architecture:
    """Architecture of ``space`` (nasrec_full or nasrec_small) from a NASRec JSON object."""
    config = _config(space)
    if not isinstance(doc, Mapping):
        raise InvalidArchitecture(where, "expected a JSON object with micro and macro")
    for key in ("micro", "macro"):
        if not isinstance(doc.get(key), list) or len(doc[key]) != NUM_BLOCKS:
            raise InvalidArchitecture(f"{where}.{key}", f"expected a list of {NUM_BLOCKS} blocks")
    if doc.get("config", config) != config:
        raise InvalidArchitecture(f"{where}.config", f"file is for NASRec space "
                                  f"{doc['config']!r}; space {space.name!r} is {config!r}")
    if int(doc.get("use_layernorm", 1)) != 1:
        raise InvalidArchitecture(f"{where}.use_layernorm", "ranknas's NASRec spaces use "
                                  "LayerNorm (use_layernorm: 1)")
    names = NODE_NAMES[config]
    values: dict[str, Any] = {}
    for i, (micro, macro) in enumerate(zip(doc["micro"], doc["macro"], strict=True), start=1):
        at, b = f"{where}.micro[{i - 1}]", f"b{i}"
        try:
            d_node, s_node = micro["active_nodes"]
            values[f"{b}.dense.op"] = names[d_node]
            values[f"{b}.sparse.op"] = names[s_node]
            values[f"{b}.dense.width"] = int(micro["dense_in_dims"])
            values[f"{b}.sparse.width"] = int(micro["sparse_in_dims"])
            values[f"{b}.merge.on"] = bool(micro["dense_sparse_interact"])
            values[f"{b}.fm.on"] = bool(micro["deep_fm"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise InvalidArchitecture(at, f"malformed block ({type(err).__name__}: {err}); "
                                      "need active_nodes [dense, sparse], dense_in_dims, "
                                      "sparse_in_dims, dense_sparse_interact, deep_fm") from None
        at = f"{where}.macro[{i - 1}]"
        try:
            values[f"{b}.dense_in.x"] = [dense_out(int(k)) for k in macro["dense_idx"]]
            values[f"{b}.sparse_in.x"] = [sparse_out(int(k)) for k in macro["sparse_idx"]]
            values[f"{b}.dense.left"] = dense_out(int(macro["dense_left_idx"][0]))
            values[f"{b}.dense.right"] = dense_out(int(macro["dense_right_idx"][0]))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise InvalidArchitecture(at, f"malformed block inputs ({type(err).__name__}: "
                                      f"{err}); need dense_idx, sparse_idx, dense_left_idx, "
                                      "dense_right_idx") from None
    if len(SMALL_SPARSE_OPS) == 1 and config == "autoctr":
        for i in range(1, NUM_BLOCKS + 1):  # a single sparse op is not a decision
            values.pop(f"b{i}.sparse.op")
    arch = space.canonicalize(values, where=where)
    space.materialize(arch)
    return arch


def to_nasrec_json(space: SearchSpace, arch: Architecture) -> dict:
    """NASRec JSON for ``arch``; decisions inactive in ranknas get the cheapest setting."""
    config = _config(space)
    space.validate(arch)
    names = NODE_NAMES[config]
    micro, macro = [], []
    for i in range(1, NUM_BLOCKS + 1):
        b = f"b{i}"
        d_op = arch.get(f"{b}.dense.op", names[0])
        s_op = arch.get(f"{b}.sparse.op", names[-1])
        micro.append({
            "active_nodes": [names.index(d_op), names.index(s_op)],
            "dense_in_dims": arch.get(f"{b}.dense.width", 16),
            "sparse_in_dims": arch.get(f"{b}.sparse.width", 16),
            "dense_sparse_interact": int(arch.get(f"{b}.merge.on", False)),
            "deep_fm": int(arch.get(f"{b}.fm.on", False)),
        })
        macro.append({
            "dense_idx": [_index_of(n) for n in arch.get(f"{b}.dense_in.x", ("dense",))],
            "sparse_idx": [_index_of(n) for n in arch.get(f"{b}.sparse_in.x", ("sparse",))],
            "dense_left_idx": [_index_of(arch.get(f"{b}.dense.left", "dense"))],
            "dense_right_idx": [_index_of(arch.get(f"{b}.dense.right", "dense"))],
        })
    return {"micro": micro, "macro": macro, "num_blocks": NUM_BLOCKS, "use_layernorm": 1,
            "config": config}


def is_nasrec_json(doc: Any) -> bool:
    return isinstance(doc, Mapping) and "micro" in doc and "macro" in doc
