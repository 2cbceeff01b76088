"""Run trials in parallel with Ray Tune, on a local Ray or on a cluster.

Tune owns the loop: it asks its search algorithm for configs and reports finished trials. A
Tune ``Searcher`` (``StrategySearcher``, in :mod:`ranknas.execution.ray_searcher`) adapts
those calls to the strategy's ``ask``/``tell`` in the driver process, so strategies never
import Ray. Each Tune trial evaluates one proposal with :func:`_trainable`, which receives
the (picklable) job through ``tune.with_parameters``, rebuilds the proposal from JSON and
reports the :class:`EvalResult` as a JSON string.

With ``workers=1`` Tune runs one trial at a time and ``tell`` lands before the next ``ask``, so
the sequence of proposals and results is the one :class:`LocalExecutor` gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ranknas.errors import ConfigError
from ranknas.evaluator.results import EvalResult, Status
from ranknas.execution.base import Budget, Executor, OnResult
from ranknas.execution.ray_searcher import (
    RESULT_KEY,
    _make_searcher,
    _tune_classes,
    proposal_from_json,
    proposal_to_json,
)
from ranknas.strategies.base import Proposal, Strategy

__all__ = ["RESULT_KEY", "RayExecutor", "_make_searcher", "proposal_from_json",
           "proposal_to_json"]

# Worker-side cache, so that a reused Tune actor keeps the job's data and evaluator.
_JOBS: dict[str, Any] = {}


def _import_ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import tune
    except ImportError as err:
        raise ConfigError("executor.name", "the ray executor needs Ray Tune, which is not "
                          f"installed ({err}): pip install 'ray[tune]'") from err
    return ray, tune


def _trainable(config: dict[str, Any], job: Any = None, job_key: str = "",
               threads: int = 0) -> None:
    """One Tune trial: evaluate ``config["proposal"]`` with ``job`` and report the result.

    Any exception of the job comes back as a ``failed`` result with the error as its reason.
    ``threads`` (if > 0) sets torch's intra-op threads: CPU kernels sum in a thread-dependent
    order, so equal results need equal thread counts.
    """
    from ray import tune

    if threads > 0:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    if job_key:
        if job_key not in _JOBS:
            _JOBS.clear()
            _JOBS[job_key] = job
        job = _JOBS[job_key]
    payload = config["proposal"]
    start = time.perf_counter()
    try:
        proposal = proposal_from_json(payload, getattr(job, "space", None))
        result = job(proposal)
        if not isinstance(result, EvalResult):
            raise TypeError(f"the job returned {type(result).__name__}, not an EvalResult")
    except Exception as err:
        result = EvalResult(payload["arch_id"], Status.FAILED,
                            seconds=time.perf_counter() - start,
                            reason=f"{type(err).__name__}: {err}")
    tune.report({RESULT_KEY: json.dumps(result.to_json())})


#: Tune settings for a run, unless the user set them: the legacy reporter (the new one prints
#: a banner even at ``verbose=0``); no trial tracebacks on the console (a failed trial's reason
#: holds the error, Tune's error.txt under ``storage_path`` the traceback); Ctrl+C raises
#: KeyboardInterrupt as it does under the local executor, instead of a "resume with Tune" stop.
_TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
             "TUNE_DISABLE_SIGINT_HANDLER": "1"}


@contextlib.contextmanager
def _tune_env() -> Iterator[None]:
    """Set :data:`_TUNE_ENV` for the duration of a run (Tune reads them at run start)."""
    added = [k for k in _TUNE_ENV if k not in os.environ]
    os.environ.update({k: _TUNE_ENV[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _job_key(ray: Any, job: Any) -> str:
    try:
        return hashlib.sha256(ray.cloudpickle.dumps(job)).hexdigest()[:16]
    except Exception:
        return uuid.uuid4().hex[:16]


class RayExecutor(Executor):
    """Evaluates proposals as Ray Tune trials, ``workers`` at a time.

    Args:
        workers: Trials run at once. With 1 (and no ``address``), trials use the driver's torch
            thread count, and results match :class:`LocalExecutor`'s exactly.
        address: A Ray cluster to join as a driver (``"auto"``, ``"host:6379"``); None starts a
            local Ray with ``workers * cpus_per_trial`` CPUs (unless Ray is already running in
            this process, which is then used as is).
        cpus_per_trial: CPUs reserved for each trial.
        gpus_per_trial: GPUs reserved for each trial (fractions share a GPU).
        storage_path: Where Tune keeps its own result files; None: a temporary folder, removed
            by :meth:`close`.

    Raises:
        ConfigError: A bad setting, or Ray Tune is not installed (raised at :meth:`run`).
    """

    def __init__(self, workers: int = 1, address: str | None = None, cpus_per_trial: float = 1,
                 gpus_per_trial: float = 0, storage_path: str | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError("executor.workers", f"expected an integer >= 1, got {workers!r}")
        if not isinstance(cpus_per_trial, int | float) or not cpus_per_trial > 0:
            raise ConfigError("executor.cpus_per_trial",
                              f"expected a number > 0, got {cpus_per_trial!r}")
        if not isinstance(gpus_per_trial, int | float) or not gpus_per_trial >= 0:
            raise ConfigError("executor.gpus_per_trial",
                              f"expected a number >= 0, got {gpus_per_trial!r}")
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigError("executor.address",
                              f"expected a Ray address such as 'auto', got {address!r}")
        if address is not None and address.startswith("ray://"):
            raise ConfigError("executor.address", "Ray Client addresses (ray://) would run Tune "
                              "away from the strategy; run the search on a cluster node with "
                              "address 'auto' (or the head's host:port)")
        self.workers = workers
        self.address = address
        self.cpus_per_trial = float(cpus_per_trial)
        self.gpus_per_trial = float(gpus_per_trial)
        self.storage_path = storage_path
        self._started_ray = False
        self._tmp_storage: str | None = None

    def _connect(self) -> tuple[Any, Any]:
        ray, tune = _import_ray()
        if not ray.is_initialized():
            quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
            if self.address is not None:
                ray.init(address=self.address, **quiet)
            else:
                ray.init(num_cpus=math.ceil(self.workers * self.cpus_per_trial),
                         include_dashboard=False, **quiet)
            self._started_ray = True
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.ERROR)
        return ray, tune

    def _storage(self) -> str:
        if self.storage_path is not None:
            path = Path(self.storage_path).expanduser().resolve()
            path.mkdir(parents=True, exist_ok=True)
            return str(path)
        if self._tmp_storage is None:
            self._tmp_storage = tempfile.mkdtemp(prefix="ranknas-ray-")
        return self._tmp_storage

    def _trial_threads(self) -> int:
        """Torch threads per trial: the driver's own count for one local worker (so that
        results match :class:`LocalExecutor`'s bit for bit), else the CPUs reserved."""
        if self.workers == 1 and self.address is None:
            import torch

            return torch.get_num_threads()
        return max(1, int(self.cpus_per_trial))

    def run(self, strategy: Strategy, job: Callable[[Proposal], EvalResult], budget: Budget,
            on_result: OnResult) -> None:
        """Run ``strategy`` until it stops asking or ``budget`` is spent.

        Every finished trial is told to the strategy, spent from the budget and passed to
        ``on_result`` in this process, in completion order. A trial whose job raised or whose
        worker crashed comes back ``failed`` with the error as its reason. An exception raised
        by the strategy or ``on_result`` stops the run and is raised here.
        """
        ray, tune = self._connect()
        from ray.tune.search import ConcurrencyLimiter

        if budget.exhausted:
            return
        classes = _tune_classes()
        searcher = classes["searcher"](strategy, budget, on_result)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, job=job, job_key=_job_key(ray, job),
                                 threads=self._trial_threads()),
            {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial})
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        name = f"{strategy.name or type(strategy).__name__}-{stamp}"
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=self.workers),
                num_samples=-1, reuse_actors=True, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=name, storage_path=self._storage(), verbose=0,
                stop=classes["stopper"](searcher), callbacks=[classes["callback"](searcher)],
                failure_config=tune.FailureConfig(max_failures=0),
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
        with _tune_env():
            tuner.fit()
        if searcher.error is not None:
            raise searcher.error

    def close(self) -> None:
        """Shut Ray down if this executor started it; remove the temporary storage."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        if self._tmp_storage is not None:
            shutil.rmtree(self._tmp_storage, ignore_errors=True)
            self._tmp_storage = None
