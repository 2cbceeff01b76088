"""The main loop end to end, on tiny data: journal, tracking, report, failures and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from ranknas.config import config_from_dict
from ranknas.errors import ConfigError
from ranknas.execution.journal import Journal
from ranknas.search import run_search

TINY = {
    "name": "tiny",
    "space": "dlrm",
    "data": {"spec": "synthetic", "rows": 3000, "seed": 0},
    "objectives": ["ne", "flops"],
    "strategies": [{"name": "random"}, {"name": "evolution", "population": 3, "sample_size": 2}],
    "budget": {"trials": 3},
    "train": {"examples": 512, "batch_size": 256},
}


def config(**overrides):
    return config_from_dict({**TINY, **overrides})


def trials(out):
    journal = Journal(out / "trials.jsonl")
    return [(r.run, r.trial_id, r.arch, r.result.status.value) for r in journal]


def test_search_writes_journal_tracking_and_report(tmp_path):
    out = run_search(config(baseline="dlrm-default"), tmp_path / "s", progress=False)
    records = list(Journal(out / "trials.jsonl"))
    assert [r.run for r in records].count("random") == 3
    assert [r.run for r in records].count("evolution") == 3
    assert all(r.result.ok and 0 < r.result.metrics["ne"] < 2 for r in records)
    assert json.loads((out / "baseline.json").read_text())["result"]["status"] == "ok"
    assert (out / "report" / "report.html").stat().st_size > 1000
    with pytest.raises(ConfigError, match="--resume"):
        run_search(config(), out, progress=False)


def test_diverging_architectures_fail_and_the_search_goes_on(tmp_path):
    out = run_search(config(train={"examples": 512, "batch_size": 256, "lr": 1e12}),
                     tmp_path / "s", progress=False)
    records = list(Journal(out / "trials.jsonl"))
    assert len(records) == 6
    failed = [r for r in records if r.result.status.value == "failed"]
    assert failed and all("diverged" in r.result.reason for r in failed)


def test_disabled_tracking_needs_no_mlflow(tmp_path, monkeypatch):
    import ranknas.reports.tracking as tracking

    def missing():
        raise AssertionError("MLflow was used with tracking disabled")

    monkeypatch.setattr(tracking, "_mlflow", missing)
    cfg = config(tracking={"enabled": False}, budget={"trials": 2})
    assert cfg.tracking == {"uri": None, "enabled": False}
    assert config().tracking == {"uri": None}  # unchanged for configs that do not say
    out = run_search(cfg, tmp_path / "s", progress=False)
    assert len(list(Journal(out / "trials.jsonl"))) == 4
    assert (out / "report" / "report.html").exists()
    assert not (out / "mlruns").exists() and not (out / "mlflow.db").exists()


def test_unreachable_tracking_server_is_reported_before_training(tmp_path):
    with pytest.raises(ConfigError) as err:
        run_search(config(tracking={"uri": "http://127.0.0.1:9"}), tmp_path / "s",
                   progress=False)
    assert "tracking.uri" in str(err.value)
    assert not (tmp_path / "s" / "trials.jsonl").exists()


def _search(cfg_path, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "ranknas.cli", "search", str(cfg_path),
                             "--out", str(out), "--quiet", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkilled_search_resumes_without_rerunning_or_duplicating(tmp_path):
    cfg = {**TINY, "budget": {"trials": 4}}
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    reference = run_search(config_from_dict(cfg), tmp_path / "ref", progress=False)

    out = tmp_path / "killed"
    proc = _search(cfg_path, out)
    journal = out / "trials.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = trials(out)
    assert 3 <= len(done_before) < 8

    resumed = _search(cfg_path, out, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    after = trials(out)
    assert after[: len(done_before)] == done_before  # nothing re-run or rewritten
    assert len({(run, tid) for run, tid, _, _ in after}) == len(after) == 8
    assert after == trials(reference)  # same trials as a search never killed


def test_bad_data_options_fail_before_the_output_folder_exists(tmp_path):
    cfg = config(data={"spec": "synthetic", "rows": 500, "options": {"cardinalitie": [3]}})
    with pytest.raises(ConfigError, match="cardinalitie"):
        run_search(cfg, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()  # so a corrected rerun needs no --resume


def test_oneshot_runs_in_the_same_loop_and_is_charged_its_supernet_work(tmp_path):
    cfg = config(strategies=[{"name": "oneshot", "supernet_examples": 1024, "candidates": 4,
                              "top_k": 2, "inner": "random", "finetune": "none",
                              "finetune_examples": 0}],
                 budget={"trials": 5})
    out = run_search(cfg, tmp_path / "s", progress=False)
    records = list(Journal(out / "trials.jsonl"))
    assert [r.meta["stage"] for r in records] == ["retrain", "retrain"]  # then it stops
    assert records[0].examples_total == 1024 + records[0].result.examples
    assert (out / "report" / "report.html").exists()
    summary = json.loads((out / "strategies" / "oneshot.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["supernet", "search"]
    assert len(summary["candidates"]) == 4
    # every stage reaches MLflow as metrics of the parent run
    import mlflow

    from ranknas.reports.tracking import local_store_uri

    client = mlflow.MlflowClient(tracking_uri=local_store_uri(out))
    parent = json.loads((out / "mlflow_run.json").read_text())["parent_run_id"]
    logged = client.get_run(parent).data.metrics
    for key in ("supernet.loss", "supernet.examples", "search.supernet_ne",
                "search.best_supernet_ne", "search.candidates", "retrain.ne"):
        assert f"oneshot.{key}" in logged, key
    assert logged["oneshot.supernet.examples"] == 1024
    curve = client.get_metric_history(parent, "oneshot.search.best_supernet_ne")
    values = [m.value for m in sorted(curve, key=lambda m: m.step)]
    assert len(values) == 4 and values == sorted(values, reverse=True)
