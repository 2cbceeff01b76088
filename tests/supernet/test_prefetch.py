"""Path prefetch: a worker process draws and encodes the paths a trainer would draw itself."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch
import torch.multiprocessing as torch_mp

from ranknas.errors import ConfigError, InvalidArchitecture
from ranknas.evaluator.data import make_synthetic
from ranknas.supernet import Supernet, SupernetTrainConfig, SupernetTrainer, make_sampler
from ranknas.supernet.prefetch import PathPrefetcher
from ranknas.supernet.samplers import UniformSampler


class FailingSampler(UniformSampler):
    """Uniform, but drawing step 3 raises."""

    def sample(self, step: int):
        if step == 3:
            raise InvalidArchitecture("space", "step 3 is broken on purpose")
        return super().sample(step)


@pytest.fixture(scope="module")
def space(train_space):
    return train_space


@pytest.fixture(scope="module")
def data():
    return make_synthetic(3000, seed=0)


def _trainer(space, data, sampler="balanced", prefetch=0, **cfg):
    cfg = {"examples": 4000, "batch_size": 200, "lr": 0.05, "eps": 0.1, **cfg}
    paths = (sampler if not isinstance(sampler, str) else
             make_sampler(sampler, space, 0, schema=data.schema))
    return SupernetTrainer(Supernet(space, data.schema, seed=0), data, paths,
                           SupernetTrainConfig(path_prefetch=prefetch, **cfg))


def _assert_same(a: SupernetTrainer, b: SupernetTrainer) -> None:
    assert a.step == b.step
    for (name, x), y in zip(a.supernet.state_dict().items(), b.supernet.state_dict().values(),
                            strict=True):
        assert torch.equal(x, y), name
    assert a.state_dict()["sampler"] == b.state_dict()["sampler"]


@pytest.mark.parametrize("execution", ["segmented", "sliced"])
def test_prefetched_paths_train_like_paths_drawn_on_the_spot(space, data, execution):
    spot = _trainer(space, data, execution=execution)
    with _trainer(space, data, prefetch=2, execution=execution) as ahead:
        for examples in (600, 400):  # two train calls: the worker's queue carries over
            spot.train(examples)
            ahead.train(examples)
            _assert_same(spot, ahead)
        # drawn from in between: the worker restarts from the sampler's new state
        spot.sampler.sample(99)
        ahead.sampler.sample(99)
        spot.train(400)
        ahead.train(400)
        _assert_same(spot, ahead)
        assert ahead.prefetcher._proc is not None
    assert ahead.prefetcher._proc is None  # leaving the block stopped the worker


def test_prefetched_checkpoint_resumes_like_an_uninterrupted_run(space, data, tmp_path):
    whole = _trainer(space, data, execution="segmented")
    whole.train(1200)
    first = _trainer(space, data, prefetch=3, execution="segmented")
    first.train(600)
    path = first.save(tmp_path / "ckpt.pt")  # the worker has drawn steps 3-5 already
    resumed = _trainer(space, data, prefetch=2, execution="segmented")
    try:
        resumed.load(path)
        resumed.train(600)
        _assert_same(whole, resumed)
    finally:
        first.close()
        resumed.close()


def test_a_worker_error_is_raised_at_its_step(space, data):
    trainer = _trainer(space, data, FailingSampler(space, 0), prefetch=2,
                       execution="segmented", check_every=1)
    with pytest.raises(InvalidArchitecture, match="broken on purpose"):
        trainer.train(2000)
    assert trainer.step == 3  # steps 0-2 ran


def test_a_dead_worker_names_the_setting_and_the_next_train_restarts_it(space, data):
    spot = _trainer(space, data, execution="segmented")
    trainer = _trainer(space, data, prefetch=1, execution="segmented")
    paths = trainer.prefetcher
    paths.start(trainer.sampler, 0)
    paths._proc.kill()
    paths._proc.join()
    with pytest.raises(RuntimeError, match="path_prefetch: 0"):
        for step in range(2):  # at most one path got queued before the kill
            paths.take(step)
    trainer.train(400)  # a fresh worker, from the sampler's last synced state
    spot.train(400)
    _assert_same(spot, trainer)
    trainer.close()


def test_take_hands_the_next_ready_path_to_prepare(space, data):
    """A ``prepare`` hook gets each next step's architecture before that step is taken (when
    the worker has it ready); the sampler's state counts only the steps taken."""
    trainer = _trainer(space, data, prefetch=3, execution="segmented")
    ref = make_sampler("balanced", space, 0, schema=data.schema)
    want = [ref.sample(step).arch_id for step in range(6)]
    paths, prepared = trainer.prefetcher, []
    try:
        paths.start(trainer.sampler, 0, prepared.append)
        assert paths.take(0).arch_id == want[0]  # waits for the worker to start
        for step in range(1, 5):
            time.sleep(1.0)  # the worker has queued the next paths (it draws in ms)
            assert paths.take(step).arch_id == want[step]
            assert prepared[-1].arch_id == want[step + 1]
        paths.sync()
        ref = make_sampler("balanced", space, 0, schema=data.schema)
        for step in range(5):
            ref.sample(step)
        assert trainer.sampler.state_dict() == ref.state_dict()
    finally:
        trainer.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and pinned copies")
def test_cuda_graphed_steps_take_the_same_paths(space, data):
    """Paths drawn ahead: the same paths, trained the same, though their steps launch the
    segments' graphs joined into one (graph_chain) where the spot trainer replays them."""
    cfg = {"device": "cuda", "execution": "segmented", "cuda_graph": True}
    spot, ahead = _trainer(space, data, **cfg), _trainer(space, data, prefetch=2, **cfg)
    try:
        for trainer in (spot, ahead):
            trainer.train(8000)  # 40 steps: paths whose variants are all captured recur
        assert ahead.masked.segments.joined > 0 and spot.masked.segments.joined == 0
        assert spot.state_dict()["sampler"] == ahead.state_dict()["sampler"]
        for (name, x), y in zip(spot.supernet.state_dict().items(),
                                ahead.supernet.state_dict().values(), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    finally:
        ahead.close()


def test_an_unpicklable_sampler_names_the_setting(space, data):
    sampler = make_sampler("uniform", space, 0, schema=data.schema)
    sampler.hook = lambda: None  # a lambda does not pickle
    trainer = _trainer(space, data, sampler, prefetch=2, execution="segmented")
    with pytest.raises(ConfigError, match="path_prefetch"):
        trainer.train(200)


def test_a_daemonic_process_draws_on_the_spot_by_default(space, data, monkeypatch):
    class Daemon:
        daemon = True

    for module in (multiprocessing, torch_mp):
        monkeypatch.setattr(module, "current_process", Daemon)
    assert SupernetTrainConfig(device="cuda", execution="segmented").prefetch_depth == 0
    trainer = _trainer(space, data, prefetch=2, execution="segmented")
    with pytest.raises(ConfigError, match="daemonic"):
        trainer.train(200)


def test_prefetch_depth_defaults_and_checks():
    assert SupernetTrainConfig().prefetch_depth == 0
    assert SupernetTrainConfig(device="cuda", execution="segmented").prefetch_depth == 4
    assert SupernetTrainConfig(device="cuda").prefetch_depth == 0  # sliced
    assert SupernetTrainConfig(path_prefetch=2).prefetch_depth == 2
    with pytest.raises(ConfigError, match="path_prefetch"):
        SupernetTrainConfig(path_prefetch=-1)
    with pytest.raises(ConfigError, match="path_prefetch"):
        PathPrefetcher(None, 0, False)
