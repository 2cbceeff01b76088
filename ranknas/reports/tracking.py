"""MLflow tracking: one experiment per study, a parent run, a nested run per trial.

Store choice: with ``uri=None`` the study logs to an embedded **SQLite** store,
``sqlite:///OUT/mlflow.db``, with artifacts under ``OUT/mlruns/``. MLflow 3 made SQLite its
default tracking store and deprecated the plain file store (``./mlruns``), and only database
stores support every feature (search, traces, the model registry). ``mlflow ui
--backend-store-uri sqlite:///OUT/mlflow.db`` shows the runs. Any other URI (``http://host:5000``
for ``mlflow server``, ``sqlite:///...``, ``databricks``) is used as is and the server or store
decides where artifacts go.

Resume: the ids of the experiment and parent run are kept in ``OUT/mlflow_run.json``. Starting
again on the same folder re-opens that parent run and reads back which (run, trial_id) pairs
already have a complete nested run (tag ``ranknas.logged``), so a resumed search logs each trial
once. A nested run left half-written by a killed process is deleted and logged again, and
:meth:`MlflowTracker.start_study` back-fills every journaled trial (``OUT/trials.jsonl``) that
has no nested run yet.

Failures: :meth:`MlflowTracker.check` reports an unreachable store before any training. An error
later (the server went away) never stops the search: it is logged as a warning, tracking stops
for the rest of the process (``tracker.failure`` says why; no retry storm per trial) and the
next ``--resume`` back-fills the missing trials from the journal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ranknas.errors import ConfigError
from ranknas.evaluator.results import Status
from ranknas.execution.journal import TrialRecord
from ranknas.reports.mlflow_keys import MAX_PARAM, MAX_TAG, as_text, clip, flatten, metric_key

_log = logging.getLogger(__name__)
STATE_FILE = "mlflow_run.json"
PARENT_TAG = "mlflow.parentRunId"
_BATCH = 100
_RUN_STATUS = {Status.OK: "FINISHED", Status.FAILED: "FAILED", Status.INFEASIBLE: "KILLED",
               Status.PRUNED: "KILLED"}

__all__ = ["MlflowTracker", "NullTracker", "flatten", "local_store_uri", "make_tracker"]


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError("tracking", "MLflow is not installed: pip install mlflow "
                          "(or pip install ranknas to get every dependency)") from None
    return mlflow


def local_store_uri(out_dir: str | Path) -> str:
    """The embedded store of a study folder: ``sqlite:///<abs OUT>/mlflow.db``."""
    return f"sqlite:///{(Path(out_dir).resolve() / 'mlflow.db').as_posix()}"


@contextmanager
def _quiet_urls() -> Iterator[None]:
    """Keep MLflow from printing two "View run" URLs to stdout per trial (server URIs)."""
    name = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    old = os.environ.get(name)
    os.environ[name] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _chunks(items: list, size: int = _BATCH) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def make_tracker(config: Any, out: str | Path, experiment: str | None = None) -> Any:
    """The tracker of a run of ``config`` (an ``ExperimentConfig``): MLflow, experiment
    ``experiment`` (default: the config's name), or one that records nothing under
    ``tracking: {enabled: false}``."""
    if not config.tracking.get("enabled", True):
        return NullTracker()
    return MlflowTracker(config.tracking.get("uri"), out, experiment or config.name)


class NullTracker:
    """A tracker that records nothing (tests, and callers that track elsewhere)."""

    uri: str | None = None

    def check(self) -> None:
        """Nothing to reach."""

    def start_study(self, config: Mapping[str, Any], *, resume: bool = True,
                    backfill: bool = True) -> None:
        """Nothing to start."""

    def log_trial(self, record: TrialRecord, choices: Mapping[str, Any] | None = None) -> bool:
        """Log nothing; returns False."""
        return False

    def sync(self, records: Iterable[TrialRecord]) -> int:
        """Log nothing; returns 0."""
        return 0

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Nothing to upload."""

    def log_series(self, series: Mapping[str, Iterable[Sequence[float]]],
                   prefix: str = "") -> None:
        """Nothing to log."""

    def end_study(self, status: str = "FINISHED") -> None:
        """Nothing to close."""

    def ui_command(self) -> str | None:
        return None


class MlflowTracker:
    """Logs a study to MLflow through :class:`mlflow.MlflowClient` (no global MLflow state).

    Args:
        uri: Tracking URI; ``None`` = the embedded SQLite store under ``out_dir``.
        out_dir: The study's output folder (holds ``mlflow_run.json`` and the local store).
        experiment: Experiment name, one per study.
        check_timeout: Seconds :meth:`check` waits for a server.
    """

    def __init__(self, uri: str | None, out_dir: str | Path, experiment: str,
                 check_timeout: float = 5.0) -> None:
        if not experiment or not isinstance(experiment, str):
            raise ConfigError("tracking.experiment", "need a non-empty experiment name")
        self.out_dir = Path(out_dir)
        self.local = uri is None
        self.uri = local_store_uri(self.out_dir) if uri is None else str(uri)
        self.experiment = experiment
        self.check_timeout = check_timeout
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.logged: set[tuple[str, int]] = set()
        self.failure: str | None = None  # set when logging failed mid-study; logging stops
        self._client: Any = None

    # -- connection -------------------------------------------------------------------------
    def check(self) -> None:
        """Fail fast, before any training, when the store cannot be reached.

        Raises:
            ConfigError: naming ``tracking.uri``: the server does not answer ``/health`` within
                ``check_timeout`` seconds, or the local folder is not writable; or MLflow is
                missing.
        """
        _mlflow()
        if self.uri.startswith(("http://", "https://")):
            url = self.uri.rstrip("/") + "/health"
            try:
                with urllib.request.urlopen(url, timeout=self.check_timeout) as resp:
                    if resp.status != 200:
                        raise OSError(f"HTTP {resp.status}")
            except (OSError, urllib.error.URLError) as err:
                reason = getattr(err, "reason", err)
                raise ConfigError("tracking.uri", f"cannot reach the MLflow server at "
                                  f"{self.uri} ({reason}). Start it (mlflow server --host "
                                  "127.0.0.1 --port 5000), fix the URI, or set tracking.uri "
                                  "to null to log to the local store under the output "
                                  "folder.") from None
        elif self.local:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                probe = self.out_dir / ".mlflow_write_test"
                probe.write_text("")
                probe.unlink()
            except OSError as err:
                raise ConfigError("tracking.uri", f"cannot write the local MLflow store in "
                                  f"{self.out_dir}: {err.strerror}") from None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _mlflow().MlflowClient(tracking_uri=self.uri)
        return self._client

    def ui_command(self) -> str:
        """The command that shows the runs."""
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri}"
        return f"mlflow ui --backend-store-uri {self.uri}"

    # -- study --------------------------------------------------------------------------------
    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            location = None
            if self.local:
                location = (self.out_dir.resolve() / "mlruns").as_uri()
            return self.client.create_experiment(self.experiment, artifact_location=location)
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _state(self) -> dict[str, Any] | None:
        path = self.out_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        same_store = state.get("local") if self.local else state.get("tracking_uri") == self.uri
        return state if same_store and state.get("experiment") == self.experiment else None

    def start_study(self, config: Mapping[str, Any], *, resume: bool = True,
                    backfill: bool = True) -> None:
        """Create or get the experiment and open the study's parent run.

        Args:
            config: The experiment config as JSON; logged as flattened params and as the
                artifact ``config.json``.
            resume: Re-open the parent run recorded in ``OUT/mlflow_run.json`` when it still
                exists in this store, and remember which trials it already holds.
            backfill: Then log every trial of ``OUT/trials.jsonl`` not logged yet (trials a
                killed search journaled but never logged, or logged while tracking was down).
        """
        self._open(config, resume)
        if backfill:
            from ranknas.execution.journal import Journal

            self.sync(Journal(self.out_dir / "trials.jsonl"))

    def _open(self, config: Mapping[str, Any], resume: bool) -> None:
        mlflow = _mlflow()
        self.failure = None
        state = self._state() if resume else None
        if state is not None:
            try:
                run = self.client.get_run(state["parent_run_id"])
                if run.info.lifecycle_stage == "active":
                    self.experiment_id = run.info.experiment_id
                    self.parent_run_id = run.info.run_id
                    self.client.update_run(self.parent_run_id, status="RUNNING")
                    resumes = int(run.data.tags.get("ranknas.resumes", "0")) + 1
                    self.client.set_tag(self.parent_run_id, "ranknas.resumes", str(resumes))
                    self.logged = self._read_logged()
                    return
            except mlflow.exceptions.MlflowException:
                pass
        self.experiment_id = self._experiment_id()
        run = self.client.create_run(self.experiment_id, run_name="study",
                                     tags={"ranknas.role": "study"})
        self.parent_run_id = run.info.run_id
        self.logged = set()
        params = [mlflow.entities.Param(k, v) for k, v in flatten(dict(config)).items()]
        for chunk in _chunks(params):
            self.client.log_batch(self.parent_run_id, params=chunk)
        self.client.log_dict(self.parent_run_id, dict(config), "config.json")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / STATE_FILE).write_text(json.dumps({
            "tracking_uri": self.uri, "local": self.local, "experiment": self.experiment,
            "experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id},
            indent=1) + "\n")

    def _nested_runs(self) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _read_logged(self) -> set[tuple[str, int]]:
        done = set()
        for run in self._nested_runs():
            tags = run.data.tags
            if tags.get("ranknas.logged") != "true":
                self.client.delete_run(run.info.run_id)  # half-written by a killed process
                continue
            done.add((tags["ranknas.run"], int(tags["ranknas.trial_id"])))
        return done

    def _require_study(self) -> str:
        if self.parent_run_id is None:
            raise ConfigError("tracking", "call start_study() before logging trials")
        return self.parent_run_id

    # -- trials -------------------------------------------------------------------------------
    def log_trial(self, record: TrialRecord, choices: Mapping[str, Any] | None = None) -> bool:
        """Log one trial as a nested run, unless its (run, trial_id) is already logged.

        Args:
            record: The journal record.
            choices: Architecture decisions for params; default ``record.arch["choices"]``.

        Returns:
            True when a run was written; False when the trial was logged before or tracking
            has stopped after an error (see :attr:`failure`).
        """
        parent = self._require_study()
        key = (record.run, record.trial_id)
        if key in self.logged or self.failure is not None:
            return False
        if not self._guard(lambda: self._log_trial(parent, record, choices)):
            return False
        self.logged.add(key)
        return True

    def _guard(self, fn: Callable[[], Any]) -> bool:
        """Run a logging call; on any error record it, warn once and stop tracking."""
        if self.failure is not None:
            return False
        try:
            fn()
        except Exception as err:  # tracking must never stop a search; the journal has it all
            text = str(err).strip()
            self.failure = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
            _log.warning("MLflow logging stopped after an error (%s); the search goes on and "
                         "`--resume` back-fills the missing trials from trials.jsonl",
                         self.failure)
            return False
        return True

    def _log_trial(self, parent: str, record: TrialRecord,
                   choices: Mapping[str, Any] | None) -> None:
        mlflow = _mlflow()
        res = record.result
        tags = {PARENT_TAG: parent, "ranknas.run": record.run,
                "ranknas.strategy": record.strategy, "ranknas.trial_id": str(record.trial_id),
                "ranknas.arch_id": res.arch_id, "ranknas.status": res.status.value}
        if res.reason:
            tags["ranknas.reason"] = clip(res.reason, MAX_TAG)
        run = self.client.create_run(self.experiment_id, run_name=f"{record.run}-{record.trial_id}",
                                     tags=tags)
        run_id = run.info.run_id
        choices = record.arch.get("choices", {}) if choices is None else choices
        params = [mlflow.entities.Param(metric_key(k), clip(as_text(v), MAX_PARAM))
                  for k, v in sorted(choices.items())]
        values = {**res.metrics, "seconds": res.seconds, "examples": float(res.examples),
                  "examples_total": float(record.examples_total),
                  "seconds_total": record.seconds_total}
        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(metric_key(k), float(v), now, step=record.trial_id)
                   for k, v in values.items() if math.isfinite(float(v))]
        for chunk in _chunks(params):
            self.client.log_batch(run_id, params=chunk)
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        self.client.log_dict(run_id, record.arch, "arch.json")
        self.client.set_tag(run_id, "ranknas.logged", "true")
        with _quiet_urls():
            self.client.set_terminated(run_id, _RUN_STATUS[res.status])

    def sync(self, records: Iterable[TrialRecord]) -> int:
        """Log every record not yet logged (back-fill after a resume); returns how many."""
        return sum(self.log_trial(r) for r in records)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file or a folder (the report, plots) to the parent run."""
        parent = self._require_study()
        path = Path(path)
        if path.is_dir():
            self._guard(lambda: self.client.log_artifacts(parent, str(path), artifact_path))
        elif path.is_file():
            self._guard(lambda: self.client.log_artifact(parent, str(path), artifact_path))
        else:
            raise ConfigError(str(path), "no such file or folder to log")

    def log_series(self, series: Mapping[str, Iterable[Sequence[float]]],
                   prefix: str = "") -> None:
        """Log metric series ``{name: [(step, value), ...]}`` on the parent run as
        ``<prefix><name>`` (e.g. a one-shot run's supernet loss curve); non-finite values
        are skipped."""
        mlflow, parent = _mlflow(), self._require_study()
        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(metric_key(prefix + name), float(value), now, int(step))
                   for name, points in series.items() for step, value in points
                   if math.isfinite(value)]
        for chunk in _chunks(metrics):
            self._guard(lambda chunk=chunk: self.client.log_batch(parent, metrics=chunk))

    def end_study(self, status: str = "FINISHED") -> None:
        """Close the parent run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if self.parent_run_id is not None:
            parent = self.parent_run_id
            self._guard(lambda: self.client.set_terminated(parent, status))

