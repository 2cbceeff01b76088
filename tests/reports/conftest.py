"""Fake study folders (config.json, trials.jsonl, baseline.json) for the reports tests."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ranknas.evaluator.data.synthetic import SyntheticConfig
from ranknas.evaluator.results import EvalResult, Status
from ranknas.execution.journal import Journal, TrialRecord
from ranknas.spaces import load_space

DATA = {"spec": "synthetic", "rows": 2000, "seed": 0}
TINY_ARCH = {"bottom.depth": 1, "bottom.width": 64, "interaction.op": "dot-product",
             "top.depth": 1, "top.width": 64}


def study_config(**overrides) -> dict:
    config = {"name": "fake-study", "space": "dlrm", "data": dict(DATA),
              "objectives": [{"name": "ne", "direction": "minimize"},
                             {"name": "flops", "direction": "minimize"}],
              "seed": 0, "train": {"examples": 512, "batch_size": 256, "lr": 0.05},
              "strategies": [{"name": "random", "label": "random"},
                             {"name": "evolution", "label": "evolution"}],
              "budget": {"trials": 6}, "tracking": {"uri": None}}
    config.update(overrides)
    return config


def write_study(out: Path, records: list[TrialRecord], config: dict | None = None,
                baseline: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config or study_config()))
    journal = Journal(out / "trials.jsonl")
    for rec in records:
        journal.append(rec)
    if baseline is not None:
        (out / "baseline.json").write_text(json.dumps(baseline))
    return out


def fake_records(n_per_run: int = 6, seed: int = 0) -> list[TrialRecord]:
    """Two runs of sampled dlrm archs with real FLOPs/params and made-up NE, plus one failed
    and one infeasible trial per run."""
    space = load_space("dlrm")
    schema = SyntheticConfig(rows=2000, seed=0).schema
    rng = random.Random(seed)
    records = []
    for run, strategy in (("random", "random"), ("evolution", "evolution")):
        examples = seconds = 0
        for i in range(n_per_run):
            arch = space.sample(rng)
            graph = space.materialize(arch, schema)
            metrics = {"flops": graph.flops, "params": graph.params}
            if i == 2:
                result = EvalResult(arch.arch_id, Status.FAILED, metrics, 256, 0.1,
                                    "training diverged at step 1: loss is nan")
            elif i == 3:
                result = EvalResult(arch.arch_id, Status.INFEASIBLE, metrics, 0, 0.0,
                                    "flops 1e9 > max_flops 1e6")
            else:
                metrics.update(ne=rng.uniform(0.8, 0.98), logloss=rng.uniform(0.4, 0.5),
                               auc=rng.uniform(0.6, 0.8))
                result = EvalResult(arch.arch_id, Status.OK, metrics, 512, 0.5)
            examples += result.examples
            seconds += result.seconds
            records.append(TrialRecord(run, strategy, i, arch.to_json(), result, examples,
                                       seconds, {}))
    return records


def baseline_doc() -> dict:
    space = load_space("dlrm")
    arch = space.canonicalize(TINY_ARCH)
    graph = space.materialize(arch, SyntheticConfig(rows=2000, seed=0).schema)
    return {"name": "dlrm-tiny", "arch": arch.to_json(),
            "result": EvalResult(arch.arch_id, Status.OK,
                                 {"ne": 0.9, "flops": graph.flops, "params": graph.params},
                                 512, 0.5).to_json()}


@pytest.fixture
def records() -> list[TrialRecord]:
    return fake_records()


@pytest.fixture
def study(tmp_path: Path, records: list[TrialRecord]) -> Path:
    return write_study(tmp_path / "out", records, baseline=baseline_doc())


@pytest.fixture
def helpers():
    """The module's helpers, for tests that build their own study folders."""
    import types

    return types.SimpleNamespace(study_config=study_config, write_study=write_study,
                                 fake_records=fake_records, baseline_doc=baseline_doc,
                                 DATA=DATA, TINY_ARCH=TINY_ARCH)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store, in its own process group."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        exe = shutil.which("mlflow")
        cmd = ([exe] if exe else [sys.executable, "-m", "mlflow"]) + [
            "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_healthy(self, timeout: float = 150.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return self.uri
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server's process group (it spawns a uvicorn worker), by its id."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=15)
                time.sleep(0.3)  # the group's worker exits right after the leader
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="session", autouse=True)
def _early_mlflow_server(request, tmp_path_factory):
    """Boot the server as the session starts, when a test will use it: its slow start-up
    (imports, schema migration) then overlaps the other tests."""
    if not any("mlflow_server" in getattr(item, "fixturenames", ())
               for item in request.session.items):
        yield None
        return
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_server(_early_mlflow_server) -> str:
    """The URI of a running ``mlflow server`` (started at session start)."""
    return _early_mlflow_server.wait_healthy()
