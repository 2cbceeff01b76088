"""Process pools hand workers the driver's dataset (shared memory) instead of rebuilding it."""

from __future__ import annotations

import io
import pickle
from multiprocessing.reduction import ForkingPickler

import pytest

from ranknas.execution import pool
from ranknas.execution.base import EvalJob

DATA = {"spec": "synthetic", "rows": 600, "seed": 0}
TRAIN = {"examples": 128, "batch_size": 64}


@pytest.fixture
def clean_pool():
    yield
    pool._CACHE.clear()
    pool._DATA.clear()


def test_workers_receive_the_drivers_dataset(clean_pool):
    job, other_seed = EvalJob("dlrm", DATA, TRAIN, 0), EvalJob("dlrm", DATA, TRAIN, 1)
    ev = job.evaluator()
    key = pool.seed_cache(job, ev)
    shared = pool._shareable([(job, "arch", 1), (other_seed, "arch", 1), ("not a job",)])
    assert list(shared.values()) == [ev.data]  # one dataset for both seeds
    pool.release(key)

    pool._receive(shared)  # what a worker's initializer does
    rebuilt = pool._evaluator(other_seed)
    assert rebuilt.data is ev.data and rebuilt.seed == 1


def test_nothing_is_shared_without_a_loaded_dataset(clean_pool):
    assert pool._shareable([(EvalJob("dlrm", DATA, TRAIN, 0), "arch", 1)]) == {}


def test_datasets_cross_processes_in_shared_memory(clean_pool):
    import torch.multiprocessing  # noqa: F401 - as run_tasks does

    data = EvalJob("dlrm", DATA, TRAIN, 0).evaluator().data
    buf = io.BytesIO()
    ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump(data)
    assert data.train.dense.is_shared() and data.valid.sparse.is_shared()
