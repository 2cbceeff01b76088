"""User-defined search spaces in YAML, validated with errors that name the YAML path.

Format (see ``examples/my_space.yaml``)::

    name: my_space
    inputs: {dense: 13, sparse: 26, embedding_dim: 16}   # shape used when no data is given
    layernorm: true
    blocks:
      - id: b1
        ops: [linear-2d, dcn-cross, dot-product]
        width: [64, 128, 256]          # a list, one int, or {same_as: <block id>}
        depth: [1, 2]                  # optional: stack 1 or 2 layers (stackable ops)
        inputs: {from: [dense, sparse], max: 2}   # or from: any-earlier; min defaults to 1
        optional: false                # true adds an on/off decision
      - id: b2
        ops: [linear-2d, sigmoid-gating]
        width: [64, 128]
        inputs: {from: any-earlier, max: 2}
    output: {from: last}               # or a list of block ids

``inputs`` may also be a plain list (always read all of them), or ``{ports: {PORT: RULE}}``
with RULE a list, ``{any_of: [...], min, max}`` or ``{one_of: [...]}``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

from ranknas.errors import ConfigError, InvalidArchitecture, SpaceError
from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces.graph import SHARED_PORT, AnyOf, Block, Fixed, OneOf, OperatorGraph, WidthTie
from ranknas.spaces.ops import OpContext
from ranknas.spaces.space import CRITEO_LIKE, SearchSpace

_TOP_KEYS = {"name", "version", "description", "inputs", "layernorm", "activation", "blocks",
             "output"}
_BLOCK_KEYS = {"id", "ops", "width", "depth", "inputs", "optional"}


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                            for v in items):
        raise SpaceError(where, f"expected a positive integer or a list of them, got {value!r}")
    return tuple(items)


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SpaceError(where, f"expected a list of node ids, got {value!r}")
    return tuple(value)


def _rule(value: Any, where: str, earlier: tuple[str, ...]) -> Fixed | AnyOf | OneOf:
    if isinstance(value, (list, str)):
        return Fixed(_names(value, where))
    if not isinstance(value, dict):
        raise SpaceError(where, "expected a list of sources or {from|any_of|one_of: ...}")
    keys = set(value)
    if "one_of" in keys:
        if keys - {"one_of"}:
            raise SpaceError(where, f"unexpected keys {sorted(keys - {'one_of'})} beside one_of")
        return OneOf(_names(value["one_of"], f"{where}.one_of"))
    key = "from" if "from" in keys else "any_of"
    if key not in keys or keys - {key, "min", "max"}:
        raise SpaceError(where, "write {from: [ids] | any-earlier, min: 1, max: N}; "
                         f"got keys {sorted(keys)}")
    cands = earlier if value[key] == "any-earlier" else _names(value[key], f"{where}.{key}")
    lo = value.get("min", 1)
    hi = value.get("max", len(cands))
    for k, v in (("min", lo), ("max", hi)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise SpaceError(f"{where}.{k}", f"expected an integer >= 0, got {v!r}")
    if lo > hi:
        raise SpaceError(where, f"min ({lo}) is larger than max ({hi})")
    return AnyOf(cands, lo, min(hi, len(cands)))


def _block(raw: Any, i: int, earlier: tuple[str, ...]) -> Block:
    at = f"blocks[{i}]"
    if not isinstance(raw, dict):
        raise SpaceError(at, "each block is a mapping with id, ops, width, inputs")
    unknown = set(raw) - _BLOCK_KEYS
    if unknown:
        raise SpaceError(f"{at}.{sorted(unknown)[0]}", f"unknown key (known: "
                         f"{', '.join(sorted(_BLOCK_KEYS))})")
    for key in ("id", "ops", "inputs"):
        if key not in raw:
            raise SpaceError(f"{at}.{key}", "missing")
    if not isinstance(raw["id"], str):
        raise SpaceError(f"{at}.id", f"expected a string, got {raw['id']!r}")
    ops = raw["ops"] if isinstance(raw["ops"], list) else [raw["ops"]]
    for j, op in enumerate(ops):
        if not isinstance(op, str):
            raise SpaceError(f"{at}.ops[{j}]", f"expected an operator name, got {op!r}")
    width: tuple[int, ...] | WidthTie | None = None
    if "width" in raw:
        w = raw["width"]
        if isinstance(w, dict):
            if set(w) != {"same_as"} or not isinstance(w["same_as"], str):
                raise SpaceError(f"{at}.width", "write {same_as: <block id>}")
            width = WidthTie(w["same_as"])
        else:
            width = _int_list(w, f"{at}.width")
    depth = _int_list(raw.get("depth", 1), f"{at}.depth")
    inputs = raw["inputs"]
    if isinstance(inputs, dict) and "ports" in inputs:
        if set(inputs) != {"ports"} or not isinstance(inputs["ports"], dict):
            raise SpaceError(f"{at}.inputs", "write {ports: {PORT: RULE, ...}}")
        rules = {str(p): _rule(r, f"{at}.inputs.ports.{p}", earlier)
                 for p, r in inputs["ports"].items()}
    else:
        rules = {SHARED_PORT: _rule(inputs, f"{at}.inputs", earlier)}
    optional = raw.get("optional", False)
    if not isinstance(optional, bool):
        raise SpaceError(f"{at}.optional", f"expected true or false, got {optional!r}")
    return Block(raw["id"], tuple(ops), width, depth, rules, optional)


def space_from_dict(doc: Any, source: str = "<yaml>") -> SearchSpace:
    """Build and check a space from a parsed YAML document.

    Raises:
        SpaceError: naming the YAML path at fault, e.g. ``blocks[2].ops[1]: unknown operator``.
    """
    if not isinstance(doc, dict):
        raise SpaceError(source, "a space file is a mapping with name, blocks and output")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise SpaceError(sorted(unknown)[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("name", "blocks"):
        if key not in doc:
            raise SpaceError(key, "missing")
    if not isinstance(doc["blocks"], list) or not doc["blocks"]:
        raise SpaceError("blocks", "expected a non-empty list of blocks")
    inputs = doc.get("inputs", {}) or {}
    if not isinstance(inputs, dict) or set(inputs) - {"dense", "sparse", "embedding_dim"}:
        raise SpaceError("inputs", "write {dense: N, sparse: F, embedding_dim: E}")
    for key in inputs:
        _int_list(inputs[key], f"inputs.{key}")
    embedding_dim = inputs.get("embedding_dim", 16)
    schema = DataSchema(inputs.get("dense", CRITEO_LIKE.num_dense),
                        (100_000,) * inputs.get("sparse", CRITEO_LIKE.num_sparse), "yaml")
    layernorm = doc.get("layernorm", True)
    if not isinstance(layernorm, bool):
        raise SpaceError("layernorm", f"expected true or false, got {layernorm!r}")
    activation = doc.get("activation", "relu")
    if activation not in ("relu", "identity"):
        raise SpaceError("activation", f"unknown activation {activation!r} (known: relu, identity)")
    blocks: list[Block] = []
    for i, raw in enumerate(doc["blocks"]):
        earlier = ("dense", "sparse", *(b.id for b in blocks))
        blocks.append(_block(raw, i, earlier))
    out = doc.get("output", {"from": "last"})
    if isinstance(out, dict):
        if set(out) != {"from"}:
            raise SpaceError("output", "write {from: last} or a list of block ids")
        out = out["from"]
    output = (blocks[-1].id,) if out == "last" else _names(out, "output")
    graph = OperatorGraph(blocks, output)
    space = SearchSpace(str(doc["name"]), graph,
                        OpContext(embedding_dim, layernorm, activation),
                        version=str(doc.get("version", "1")), default_schema=schema,
                        description=str(doc.get("description", f"user space from {source}")))
    try:  # shape mismatches surface here, before any training
        space.sample(random.Random(0))
    except (SpaceError, InvalidArchitecture) as err:
        raise SpaceError("blocks", f"no buildable architecture: {err}") from None
    return space


def load_space_yaml(path: str | Path) -> SearchSpace:
    """Read a YAML space file; errors are prefixed with the file name."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(str(path), f"cannot read space file: {err.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}" if mark else path.name
        raise SpaceError(where, f"malformed YAML: {getattr(err, 'problem', err)}") from None
    try:
        return space_from_dict(doc, path.name)
    except ConfigError as err:
        raise SpaceError(f"{path.name}: {err.where}", err.message) from None
