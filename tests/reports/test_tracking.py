import json
import socket
import time
from pathlib import Path

import pytest

from ranknas.errors import ConfigError
from ranknas.reports.tracking import (
    STATE_FILE,
    MlflowTracker,
    NullTracker,
    flatten,
    local_store_uri,
)

mlflow = pytest.importorskip("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nested(client, tracker):
    return client.search_runs([tracker.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'",
                              max_results=1000)


def _check_study(client, tracker, records, config):
    parent = client.get_run(tracker.parent_run_id)
    assert parent.data.params["train.lr"] == "0.05"
    assert json.loads(parent.data.params["strategies"])[0]["name"] == "random"
    runs = _nested(client, tracker)
    assert len(runs) == len(records)
    by_key = {(r.data.tags["ranknas.run"], int(r.data.tags["ranknas.trial_id"])): r
              for r in runs}
    for rec in records:
        run = by_key[(rec.run, rec.trial_id)]
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        assert tags["ranknas.status"] == rec.result.status.value
        assert tags["ranknas.arch_id"] == rec.result.arch_id
        assert tags["ranknas.strategy"] == rec.strategy
        assert tags.get("ranknas.reason", "") == rec.result.reason
        assert metrics["flops"] == rec.result.metrics["flops"]
        assert metrics["examples"] == rec.result.examples
        if rec.result.ok:
            assert metrics["ne"] == pytest.approx(rec.result.metrics["ne"])
            assert run.info.status == "FINISHED"
        else:
            assert "ne" not in metrics
            assert run.info.status in ("FAILED", "KILLED")
        for name, value in rec.arch["choices"].items():
            assert params[name] == (value if isinstance(value, str) else json.dumps(value))
    one = runs[0]
    arch = json.loads(Path(client.download_artifacts(one.info.run_id, "arch.json")).read_text())
    assert arch["space"] == "dlrm"
    saved = Path(client.download_artifacts(tracker.parent_run_id, "config.json")).read_text()
    assert json.loads(saved) == config


def test_flatten_clips_and_sanitises():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "bad key!": "x" * 7000, "e": {}})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]" and flat["e"] == "{}"
    assert flat["bad key_"].endswith("...") and len(flat["bad key_"]) == 6000


def test_null_tracker_has_the_same_methods(records, tmp_path):
    null = NullTracker()
    for name in ("check", "start_study", "log_trial", "sync", "log_artifacts", "log_series",
                 "end_study"):
        assert callable(getattr(null, name)) and callable(getattr(MlflowTracker, name))
    null.check()
    null.start_study({})
    assert null.log_trial(records[0]) is False
    null.log_artifacts(tmp_path)
    null.end_study()


def test_local_store_logs_and_resumes_without_duplicates(tmp_path, records, helpers):
    out = tmp_path / "out"
    config = helpers.study_config()
    tracker = MlflowTracker(None, out, "study-a")
    assert tracker.uri == local_store_uri(out) and tracker.uri.startswith("sqlite:///")
    tracker.check()
    tracker.start_study(config)
    half = len(records) // 2
    for rec in records[:half]:
        assert tracker.log_trial(rec, rec.arch["choices"])
    assert not tracker.log_trial(records[0])  # already logged
    (out / "note.txt").write_text("hello")
    tracker.log_artifacts(out / "note.txt", "report")
    # A process killed mid-trial leaves a nested run without the "logged" tag.
    client = mlflow.MlflowClient(tracking_uri=tracker.uri)
    client.create_run(tracker.experiment_id, tags={
        "mlflow.parentRunId": tracker.parent_run_id, "ranknas.run": records[half].run,
        "ranknas.trial_id": str(records[half].trial_id)})
    parent_id = tracker.parent_run_id
    assert (out / "mlruns").is_dir() and (out / "mlflow.db").is_file()

    resumed = MlflowTracker(None, out, "study-a")
    resumed.start_study(config, backfill=False)
    assert resumed.parent_run_id == parent_id
    assert len(resumed.logged) == half
    assert resumed.sync(records[:-1]) == len(records) - half - 1
    # The next resume back-fills what the journal holds but MLflow lacks.
    helpers.write_study(out, records, config)
    resumed = MlflowTracker(None, out, "study-a")
    resumed.start_study(config)
    assert resumed.parent_run_id == parent_id and len(resumed.logged) == len(records)
    resumed.end_study("FINISHED")
    _check_study(client, resumed, records, config)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["ranknas.resumes"] == "2"
    assert "note.txt" in [a.path.split("/")[-1] for a in client.list_artifacts(parent_id,
                                                                              "report")]
    # Without resume a new parent run is opened in the same experiment.
    fresh = MlflowTracker(None, out, "study-a")
    fresh.start_study(config, resume=False, backfill=False)
    assert fresh.parent_run_id != parent_id and not fresh.logged
    state = json.loads((out / STATE_FILE).read_text())
    assert state["parent_run_id"] == fresh.parent_run_id
    assert "mlflow ui --backend-store-uri sqlite:///" in fresh.ui_command()


def test_errors_mid_study_stop_tracking_not_the_search(tmp_path, records, caplog):
    tracker = MlflowTracker(None, tmp_path, "x")
    with pytest.raises(ConfigError, match="start_study"):
        tracker.log_trial(records[0])
    class Broken:
        calls = 0

        def __getattr__(self, name):
            Broken.calls += 1
            raise mlflow.exceptions.MlflowException("API request failed: connection refused")

    tracker._client = Broken()
    tracker.parent_run_id, tracker.experiment_id = "parent", "0"
    assert tracker.log_trial(records[0]) is False
    assert tracker.failure and "MLflow logging stopped" in caplog.text
    assert tracker.log_trial(records[1]) is False  # no retry per trial
    tracker.log_artifacts(tmp_path)
    tracker.end_study()
    assert Broken.calls == 1


def test_unreachable_server_fails_fast(tmp_path):
    tracker = MlflowTracker(f"http://127.0.0.1:{_free_port()}", tmp_path, "x",
                            check_timeout=2.0)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"tracking\.uri.*cannot reach") as err:
        tracker.check()
    assert time.perf_counter() - start < 5
    assert "mlflow server" in str(err.value)


def test_tracking_server(mlflow_server, tmp_path, records, helpers):
    uri = mlflow_server
    records = records[:4]  # ok, ok, failed, infeasible: every kind, few round trips
    out = tmp_path / "out"
    config = helpers.study_config()
    tracker = MlflowTracker(uri, out, "server-study")
    tracker.check()
    tracker.start_study(config)
    assert tracker.sync(records) == len(records)
    tracker.end_study()
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("server-study") is not None
    _check_study(client, tracker, records, config)
    resumed = MlflowTracker(uri, out, "server-study")
    resumed.start_study(config)
    assert resumed.parent_run_id == tracker.parent_run_id
    assert resumed.sync(records) == 0
