"""ranknas's exceptions survive pickling (they cross process boundaries)."""

from __future__ import annotations

import pickle

import pytest

from ranknas.errors import ConfigError, InvalidArchitecture, SpaceError, TrainingDiverged


@pytest.mark.parametrize("error", [ConfigError("train.lr", "must be > 0"),
                                   SpaceError("blocks[1]", "unknown op"),
                                   InvalidArchitecture("b1.op", "not a choice"),
                                   TrainingDiverged(7, "loss is nan")])
def test_errors_round_trip_through_pickle(error: Exception) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert vars(back) == vars(error)


def _raise_invalid(_: int) -> None:
    raise InvalidArchitecture("b1.op", "not a choice")


def test_an_error_in_a_pool_worker_reaches_the_driver() -> None:
    # unpicklable errors used to break the whole pool (BrokenProcessPool)
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool, \
            pytest.raises(InvalidArchitecture, match=r"b1\.op: not a choice"):
        pool.submit(_raise_invalid, 0).result()
