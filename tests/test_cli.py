import json
import shutil
from pathlib import Path

import pytest

from ranknas.cli import main

CONFIGS = Path(__file__).parents[2] / "shared" / "nasrec-configs"


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_spaces_list(capsys):
    code, out, _ = run(capsys, "spaces", "list")
    assert code == 0
    for name in ("dlrm", "nasrec_small", "nasrec_full", "rankitect"):
        assert name in out


def test_spaces_show_yaml(capsys):
    code, out, _ = run(capsys, "spaces", "show", "examples/my_space.yaml", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["space"] == "my_space" and doc["sample_flops"] > 0


def test_train_prints_one_json_object(capsys):
    code, out, _ = run(capsys, "train", "--space", "dlrm", "--arch", "random:1", "--rows", "3000",
                       "--steps", "20", "--batch-size", "128", "--json", "--quiet")
    assert code == 0
    doc = json.loads(out)
    for key in ("ne", "logloss", "auc", "flops", "params", "examples", "seconds"):
        assert key in doc
    assert doc["examples"] == 20 * 128


def test_train_accepts_nasrec_json(capsys, tmp_path):
    src = CONFIGS / "criteo_small_best.json"
    if not src.exists():
        pytest.skip("shared NASRec configs not present")
    shutil.copy(src, tmp_path / "small.json")
    code, out, _ = run(capsys, "train", "--space", "nasrec_small", "--arch",
                       str(tmp_path / "small.json"), "--rows", "2000", "--steps", "2",
                       "--batch-size", "64", "--json", "--quiet")
    assert code == 0
    assert json.loads(out)["flops"] > 4e6


@pytest.mark.parametrize(("argv", "needle"), [
    (["train", "--space", "nope"], "unknown space 'nope'"),
    (["train", "--space", "dlrm", "--arch", "random:x"], "random:SEED"),
    (["train", "--space", "dlrm", "--arch", "missing.json"], "cannot read"),
    (["train", "--space", "dlrm", "--data", "parquet:x"], "parquet"),
])
def test_bad_input_is_one_clear_line(capsys, argv, needle):
    code, _, err = run(capsys, *argv, "--quiet")
    assert code == 2
    assert err.startswith("ranknas: error:") and needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("option", "needle"), [
    ("segmented", "expected KEY=VALUE"),
    ("lr=0.1", "supernet_train.lr"),
])
def test_rank_corr_supernet_train_options_are_checked(capsys, tmp_path, option, needle):
    config = tmp_path / "rc.yaml"
    config.write_text("space: dlrm\ndata: {spec: synthetic, rows: 500}\n"
                      "train: {examples: 256}\nstrategies: [{name: random}]\n"
                      "budget: {trials: 1}\n")
    code, _, err = run(capsys, "rank-corr", str(config), "--out", str(tmp_path / "out"),
                       "--supernet-train", option, "--quiet")
    assert code == 2 and needle in err and "Traceback" not in err
