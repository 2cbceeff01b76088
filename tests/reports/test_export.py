import json
import subprocess
import sys

import pytest

from ranknas.errors import ConfigError
from ranknas.evaluator.results import EvalResult, Status
from ranknas.execution.journal import TrialRecord
from ranknas.reports.export import export_front, train_config_from
from ranknas.reports.loading import load
from ranknas.spaces import load_space

# Runs in a fresh interpreter: load the export, regenerate the validation data from the
# config's spec + seed, score it, and run the torch.export program on a batch.
CHECK = """
import json, sys
import torch
import ranknas
from ranknas.evaluator.training import evaluate
from ranknas.reports.loading import load_config_data

folder = sys.argv[1]
card = json.load(open(folder + "/model.json"))
model = ranknas.load(folder)
data = load_config_data(card["data"], seed=card["seed"])
ne = evaluate(model, data.valid, data.background_ctr,
              batch_size=card["train"]["eval_batch_size"])["ne"]
program = torch.export.load(folder + "/program.pt2").module()
batch = data.valid.dense[:5], data.valid.sparse[:5]
with torch.no_grad():
    diff = (program(*batch) - model(*batch)).abs().max().item()
print(json.dumps({"ne": ne, "diff": diff, "type": type(model).__name__}))
"""


def test_export_then_load_in_a_fresh_process(tmp_path, helpers):
    space = load_space("dlrm")
    arch = space.canonicalize(helpers.TINY_ARCH)
    ok = EvalResult(arch.arch_id, Status.OK, {"ne": 0.9, "flops": 1000.0, "params": 10.0},
                    512, 0.5)
    failed = EvalResult("deadbeef", Status.FAILED, {"flops": 10.0}, 0, 0.1, "loss is nan")
    records = [TrialRecord("random", "random", 0, arch.to_json(), ok, 512, 0.5, {}),
               TrialRecord("random", "random", 1, arch.to_json(), failed, 512, 0.6, {})]
    out = helpers.write_study(tmp_path / "out", records)
    folders = export_front(out, tmp_path / "export", train_examples=256)
    assert folders == [tmp_path / "export" / arch.arch_id]
    folder = folders[0]
    for name in ("arch.json", "weights.safetensors", "program.pt2", "model.json",
                 "MODEL_CARD.md"):
        assert (folder / name).is_file(), name
    card = json.loads((folder / "model.json").read_text())
    assert card["export"]["ok"] and card["export"]["dynamic_batch"]
    assert card["training"]["examples"] == 256 and card["seed"] == 0
    assert card["flops"] == space.materialize(arch, _schema(card)).flops
    assert "ranknas export" in card["reproduce"] and "--train-examples 256" in card["reproduce"]
    text = (folder / "MODEL_CARD.md").read_text()
    assert arch.arch_id in text and "ranknas.load" in text and "## Reproduce" in text

    proc = subprocess.run([sys.executable, "-c", CHECK, str(folder)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["type"] == "RankingModel"
    assert abs(got["ne"] - card["metrics"]["valid"]["ne"]) < 1e-6
    assert got["diff"] < 1e-5


def _schema(card):
    from ranknas.evaluator.data.schema import DataSchema

    return DataSchema.from_json(card["schema"])


def test_export_errors(tmp_path, helpers):
    out = helpers.write_study(tmp_path / "out", [])
    with pytest.raises(ConfigError, match="no successful trial"):
        export_front(out, tmp_path / "export")
    with pytest.raises(ConfigError, match=r"no model\.json"):
        load(tmp_path)
    with pytest.raises(ConfigError, match=r"train\.bogus"):
        train_config_from({"train": {"examples": 10, "bogus": 1}})
    cfg = train_config_from({"train": {"steps": 3}, "seed": 7}, train_examples=100)
    assert (cfg.examples, cfg.steps, cfg.seed) == (100, None, 7)


def test_user_yaml_space_is_embedded_and_rebuilt(tmp_path):
    from ranknas.reports.loading import space_from_spec

    text = """name: tiny_yaml
inputs: {dense: 13, sparse: 26, embedding_dim: 8}
blocks:
  - {id: b1, ops: [linear-2d, dot-product], width: [16, 32], inputs: {from: [dense, sparse]}}
output: {from: last}
"""
    (tmp_path / "space.yaml").write_text(text)
    space, embedded = space_from_spec("space.yaml", base_dir=tmp_path)  # relative to OUT
    assert embedded == text
    again, _ = space_from_spec({"name": "tiny_yaml", "yaml": embedded})
    assert [c.name for c in again.choices()] == [c.name for c in space.choices()]
    with pytest.raises(ConfigError, match="space"):
        space_from_spec(None)
