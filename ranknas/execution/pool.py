"""Standalone trainings and supernet scorings spread over processes.

Rank-correlation diagnostics (fifty architectures, two seeds, each then fine-tuned on the
supernet) and one-shot search (hundreds of candidates fine-tuned on the supernet) are many
independent trainings: :func:`run_tasks` spreads them over ``workers`` spawned processes (one
CPU thread each, or sharing one GPU, where eager training of small models is host-bound and
several processes fill the device). Every task is seeded by its own arguments, never by the
process it lands on, so the results do not depend on ``workers``.

Workers rebuild the space, evaluator and supernet from plain, picklable state (an
:class:`~ranknas.execution.base.EvalJob` and a weights file) and cache them per process, so
each builds them once, not once per task. The dataset is not rebuilt: where the calling
process holds it (an evaluator it built for a task's job), the workers receive it at start
in shared memory, so N workers neither load nor hold N copies. The calling process can hand
its own evaluator and supernet to the same tasks (:func:`seed_cache`, :func:`keep_supernet`),
so ``workers=1`` runs the very same code in place.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

__all__ = ["keep_supernet", "release", "run_tasks", "save_supernet", "score_task",
           "seed_cache", "standalone_task"]

# Per process: evaluators by EvalJob state, supernets by weights file.
_CACHE: dict[str, Any] = {}
# Per worker: datasets the calling process handed over, by data spec.
_DATA: dict[str, Any] = {}


def _key(job: Any) -> str:
    return json.dumps(job.__getstate__(), sort_keys=True, default=str)


def _data_key(job: Any) -> str:
    return json.dumps(job.data, sort_keys=True, default=str)


def seed_cache(job: Any, evaluator: Any) -> str:
    """Let the calling process reuse an ``evaluator`` it already built for ``job``; the key
    to :func:`release`."""
    key = _key(job)
    _CACHE[key] = evaluator
    return key


def release(*keys: str) -> None:
    """Drop what this process cached under ``keys`` (data and supernets are large)."""
    for key in keys:
        _CACHE.pop(key, None)


def keep_supernet(key: str, supernet: Any, adagrad_sums: Mapping[str, Any] | None) -> str:
    """Let :func:`score_task` in this process use an in-memory supernet under ``key``."""
    _CACHE[key] = (supernet, adagrad_sums)
    return key


def _evaluator(job: Any) -> Any:
    key = _key(job)
    if key not in _CACHE:
        _CACHE[key] = job.evaluator(data=_DATA.get(_data_key(job)))
    return _CACHE[key]


def _shareable(tasks: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The datasets this process already holds for the tasks' jobs (their first argument),
    on the CPU: CUDA tensors do not cross processes safely."""
    out: dict[str, Any] = {}
    for task in tasks:
        job = task[0] if task else None
        if not hasattr(job, "data") or _data_key(job) in out:
            continue
        ev = _CACHE.get(_key(job)) or getattr(job, "_cache", {}).get("evaluator")
        data = getattr(ev, "data", None)
        if data is not None and data.train.labels.device.type == "cpu":
            out[_data_key(job)] = data
    return out


def _receive(shared: dict[str, Any]) -> None:
    """Worker initializer: keep the datasets handed over (their tensors arrive in shared
    memory through torch's multiprocessing pickler)."""
    _DATA.update(shared)


def standalone_task(job: Any, arch: Any, examples: int | None) -> Any:
    """Train ``arch`` standalone under ``job`` (an EvalJob); its EvalResult."""
    return _evaluator(job)(arch, examples)


def _supernet(job: Any, weights: str, supernet_seed: int) -> tuple[Any, Any]:
    """The supernet saved at ``weights`` (state dict and Adagrad sums), rebuilt once per
    process; ``(supernet, adagrad sums or None)``."""
    if weights not in _CACHE:
        import torch

        from ranknas.supernet import Supernet

        ev = _evaluator(job)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        supernet = Supernet(ev.space, ev.data.schema, supernet_seed)
        supernet.load_state_dict(state["supernet"])
        supernet.to(ev.train_config.device)  # extract on the device, as the driver does
        _CACHE[weights] = (supernet, state.get("adagrad_sums"))
    return _CACHE[weights]


def save_supernet(path: Path, supernet: Any, adagrad_sums: Mapping[str, Any] | None) -> str:
    """Write what :func:`score_task` rebuilds the supernet from; the path as a string."""
    import torch

    state: dict[str, Any] = {"supernet": {k: v.detach().cpu()
                                          for k, v in supernet.state_dict().items()}}
    if adagrad_sums is not None:
        state["adagrad_sums"] = {k: v.detach().cpu() for k, v in adagrad_sums.items()}
    torch.save(state, path)
    return str(path)


def score_task(job: Any, weights: str, supernet_seed: int, arch: Any, modes: Iterable[str],
               options: Mapping[str, Any]) -> dict[str, Any]:
    """Score ``arch`` on the saved supernet once per fine-tuning mode; mode -> EvalResult.

    ``options`` go to :func:`~ranknas.supernet.scoring.score_on_supernet` (fine-tuning
    examples, lr, seed); ``adagrad_sums`` are passed when the weights file holds them and
    ``options["continue"]`` is set.
    """
    from ranknas.execution.standalone import torch_threads
    from ranknas.supernet.scoring import score_on_supernet

    ev = _evaluator(job)
    supernet, sums = _supernet(job, weights, supernet_seed)
    kwargs = {k: v for k, v in options.items() if k != "continue"}
    if options.get("continue"):
        kwargs["adagrad_sums"] = sums
    with torch_threads(ev.threads):  # as in the driver: reductions depend on the thread count
        return {mode: score_on_supernet(supernet, ev.space, arch, ev.data, ev.train_config,
                                        finetune=mode, **kwargs)
                for mode in modes}


def run_tasks(fn: Callable[..., Any], tasks: list[tuple[Any, ...]], workers: int,
              on_done: Callable[[int, Any], None]) -> None:
    """Call ``fn(*task)`` for every task; ``on_done(index, result)`` as each finishes.

    ``workers == 1`` runs them in order in this process; more spawn that many processes
    (spawn, not fork: CUDA cannot be forked, and a fork would copy the driver's threads).
    A task that raises stops the run with that exception.
    """
    if workers == 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            on_done(i, fn(*task))
        return
    import torch.multiprocessing  # noqa: F401 - registers the pickler that shares tensors

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context,
                             initializer=_receive, initargs=(_shareable(tasks),)) as pool:
        futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            on_done(futures[future], future.result())
