import json
from pathlib import Path

import pytest

from ranknas.errors import InvalidArchitecture
from ranknas.spaces import load_space
from ranknas.spaces.nasrec_json import from_nasrec_json, to_nasrec_json

CONFIGS = Path(__file__).parents[3] / "shared" / "nasrec-configs"
FILES = [("nasrec_full", "criteo_full_best.json", 1.45e6),
         ("nasrec_small", "criteo_small_best.json", 2.20e6)]


def load(name):
    path = CONFIGS / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


@pytest.mark.parametrize(("space_name", "file", "reported"), FILES)
def test_import_round_trip(space_name, file, reported):
    space = load_space(space_name)
    doc = load(file)
    arch = from_nasrec_json(space, doc)
    exported = to_nasrec_json(space, arch)
    assert from_nasrec_json(space, json.loads(json.dumps(exported))).arch_id == arch.arch_id
    # Blocks that reach the logit keep their published ops and widths.
    graph = space.materialize(arch)
    live = {n.block.split(".")[0] for n in graph.nodes}
    for i, (mine, theirs) in enumerate(zip(exported["micro"], doc["micro"], strict=True)):
        if f"b{i + 1}" in live:
            assert mine["dense_in_dims"] == theirs["dense_in_dims"]
            assert mine["active_nodes"] == theirs["active_nodes"]


@pytest.mark.parametrize(("space_name", "file", "reported"), FILES)
def test_multiply_adds_match_nasrecs_reported_flops(space_name, file, reported):
    # NASRec's figure counts one FLOP per multiply-add (fvcore); ours are 2 per MAC.
    space = load_space(space_name)
    graph = space.materialize(from_nasrec_json(space, load(file)))
    assert graph.cost.matmul_flops / 2 == pytest.approx(reported, rel=0.01)


def test_wrong_space_and_malformed_blocks_are_named():
    full, small = load_space("nasrec_full"), load_space("nasrec_small")
    doc = load("criteo_full_best.json")
    with pytest.raises(InvalidArchitecture, match="xlarge"):
        from_nasrec_json(small, doc)
    broken = json.loads(json.dumps(doc))
    del broken["micro"][2]["dense_in_dims"]
    with pytest.raises(InvalidArchitecture, match=r"micro\[2\]"):
        from_nasrec_json(full, broken)
    broken = json.loads(json.dumps(doc))
    broken["micro"][0]["dense_in_dims"] = 100
    with pytest.raises(InvalidArchitecture, match=r"b1\.dense\.width"):
        from_nasrec_json(full, broken)
    with pytest.raises(InvalidArchitecture, match="only for"):
        from_nasrec_json(load_space("dlrm"), doc)
