"""Supernet trainer: learning, op coverage, resume equality, divergence, config checks."""

from __future__ import annotations

import math

import pytest
import torch

from ranknas.errors import ConfigError, TrainingDiverged
from ranknas.evaluator.data import make_synthetic
from ranknas.supernet import Supernet, SupernetTrainConfig, SupernetTrainer, make_sampler


@pytest.fixture(scope="module")
def space(train_space):
    return train_space


@pytest.fixture(scope="module")
def data():
    return make_synthetic(4000, seed=0)


def _trainer(space, data, sampler="uniform", seed=0, options=None, **cfg):
    cfg = {"examples": 4000, "batch_size": 200, "lr": 0.05, "seed": seed, **cfg}
    supernet = Supernet(space, data.schema, seed=seed)
    paths = make_sampler(sampler, space, seed, schema=data.schema, **(options or {}))
    return SupernetTrainer(supernet, data, paths, SupernetTrainConfig(**cfg))


def test_loss_decreases_and_scores(space, data):
    trainer = _trainer(space, data, "any-path", batch_size=100, examples=9600, log_every=10)
    logs = []
    result = trainer.train(progress=logs.append, examples=None)
    assert result["examples"] == 9600 and result["steps"] == 96 and result["captured"] == 0
    first = logs[0]["loss"]
    assert result["loss"] < first - 0.02, (first, result["loss"])
    scores = trainer.score(trainer.sampler.sample(0))
    assert scores["count"] == len(data.valid)
    assert math.isfinite(scores["ne"]) and 0.5 < scores["auc"] <= 1
    assert trainer.supernet.training  # score restores the mode


def test_balanced_trains_every_op(space, data):
    trainer = _trainer(space, data, "balanced", examples=2000)
    before = {k: [p.detach().clone() for p in m.parameters()]
              for k, m in trainer.supernet.elastic.items()}
    trainer.train()
    for key, module in trainer.supernet.elastic.items():
        moved = any(not torch.equal(a, p) for a, p in zip(before[key], module.parameters(),
                                                           strict=True))
        assert moved or not before[key], f"{key} was never trained"
    counts = trainer.sampler.counts
    assert all(min(c.values()) >= 3 for c in counts.values()), counts


def test_resume_equals_uninterrupted(space, data, tmp_path):
    whole = _trainer(space, data, "warmup", options={"warmup_steps": 8})
    whole.train(4000)
    first = _trainer(space, data, "warmup", options={"warmup_steps": 8})
    first.train(2000)
    path = first.save(tmp_path / "ckpt" / "supernet.pt")
    assert not list(path.parent.glob(".*tmp*"))
    resumed = _trainer(space, data, "warmup", seed=5, options={"warmup_steps": 8})
    resumed.load(path)
    result = resumed.train()  # the rest of config.examples
    assert result["examples"] == 4000 and result["steps"] == whole.step == 20
    for (name, a), b in zip(whole.supernet.state_dict().items(),
                            resumed.supernet.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.sampler.state_dict() == whole.sampler.state_dict()
    for oa, ob in zip(whole.optimizers, resumed.optimizers, strict=True):
        for sa, sb in zip(oa.state.values(), ob.state.values(), strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_periodic_checkpoints(space, data, tmp_path):
    path = tmp_path / "periodic.pt"
    trainer = _trainer(space, data, examples=1000, checkpoint_every=2,
                       checkpoint_path=str(path))
    trainer.train()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 4 and state["examples"] == 800


def test_sparse_embedding_has_its_own_sparse_optimizer(space, data):
    trainer = _trainer(space, data, optimizer="adam")
    dense_opt, sparse_opt = trainer.optimizers
    assert isinstance(dense_opt, torch.optim.Adam)
    assert isinstance(sparse_opt, torch.optim.SparseAdam)
    assert sparse_opt.param_groups[0]["params"] == [trainer.supernet.embedding.table.weight]
    trainer.train(400)


def test_divergence_carries_the_step(space, data):
    trainer = _trainer(space, data)
    trainer.train(600)
    with torch.no_grad():
        trainer.supernet.head_bias.fill_(math.nan)
    with pytest.raises(TrainingDiverged) as err:
        trainer.train(600)
    assert err.value.step == 4


@pytest.mark.parametrize(("field", "value"), [
    ("examples", 0), ("batch_size", -1), ("optimizer", "lbfgs"), ("lr", 0.0),
    ("sparse_lr", math.nan), ("seed", -1), ("device", "gpu7"), ("checkpoint_every", 0),
    ("checkpoint_path", None), ("weight_decay", -1.0), ("eps", True),
])
def test_bad_config_fields_raise_config_error(field, value):
    extra = {"checkpoint_every": 5} if field == "checkpoint_path" else {}
    with pytest.raises(ConfigError) as err:
        SupernetTrainConfig(**{field: value, **extra})
    assert err.value.where == f"supernet.train.{field}"


def _losses(trainer, examples):
    out = []
    trainer.train(examples, progress=lambda p: out.append(p["loss"]))
    return out


@pytest.mark.parametrize("execution", ["masked", "segmented"])
def test_fixed_shape_execution_trains_like_sliced(space, data, execution):
    # eps 0.1: with 1e-8, Adagrad's first step turns rounding noise on ~0 grads into +-lr
    sliced = _losses(_trainer(space, data, eps=0.1, log_every=1), 1600)
    masked = _trainer(space, data, eps=0.1, log_every=1, execution=execution)
    assert masked.optimizers == [] and masked.masked is not None
    assert masked.supernet.embedding.table.weight.requires_grad
    got = _losses(masked, 1600)
    assert len(got) == len(sliced) == 8
    assert got == pytest.approx(sliced, rel=1e-4)


@pytest.mark.parametrize("execution", ["masked", "segmented"])
def test_fixed_shape_resume_equals_uninterrupted(space, data, tmp_path, execution):
    whole = _trainer(space, data, execution=execution)
    whole.train(1200)
    first = _trainer(space, data, execution=execution)
    first.train(600)
    path = first.save(tmp_path / "masked.pt")
    resumed = _trainer(space, data, seed=3, execution=execution)
    resumed.load(path)
    resumed.train(600)
    for (name, a), b in zip(whole.supernet.state_dict().items(),
                            resumed.supernet.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(whole.masked.table.state, resumed.masked.table.state)


@pytest.mark.parametrize(("field", "value", "extra"), [
    ("execution", "dense", {}), ("compile", True, {}), ("precision", "tf32", {}),
    ("cuda_graph", True, {"execution": "masked"}), ("optimizer", "adam", {"execution": "masked"}),
    ("precision", "fp8", {"execution": "masked"}), ("embedding_update", "dense", {}),
    ("cuda_graph", True, {"execution": "segmented"}),
    ("compile", True, {"execution": "segmented"}),
    ("embedding_update", "index", {"execution": "segmented"}),
    ("embedding_update", "index", {"optimizer": "adam"}),
    ("embedding_update", "index", {"execution": "masked"}),
])
def test_bad_execution_options_name_the_field(field, value, extra):
    with pytest.raises(ConfigError) as err:
        SupernetTrainConfig(**{field: value, **extra})
    assert err.value.where == f"supernet.train.{field}"


def test_index_embedding_update_trains_like_sparse(space, data, tmp_path):
    sparse = _losses(_trainer(space, data, eps=0.1, log_every=1), 1600)
    index = _trainer(space, data, eps=0.1, log_every=1, embedding_update="index")
    assert _losses(index, 1600) == pytest.approx(sparse, rel=1e-4)
    # the table's lookup is patched only while training
    assert "forward" not in vars(index.supernet.embedding.table)
    path = index.save(tmp_path / "index.pt")
    whole = _trainer(space, data, embedding_update="index")
    whole.train(1200)
    first = _trainer(space, data, embedding_update="index")
    first.train(600)
    first.save(path)
    resumed = _trainer(space, data, seed=2, embedding_update="index")
    resumed.load(path)
    resumed.train(600)
    for (name, a), b in zip(whole.supernet.state_dict().items(),
                            resumed.supernet.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("options", [{"embedding_update": "index"}, {"execution": "masked"},
                                     {"execution": "segmented"}])
def test_late_checked_divergence_names_the_first_bad_step(space, data, options):
    trainer = _trainer(space, data, check_every=4, **options)
    trainer.train(600)
    with torch.no_grad():
        trainer.supernet.head_bias.fill_(math.nan)
    with pytest.raises(TrainingDiverged) as err:
        trainer.train(2000)
    assert err.value.step == 4 and "after step 7" in str(err.value)


@pytest.mark.parametrize("options", [{}, {"embedding_update": "index"}, {"execution": "masked"},
                                     {"execution": "segmented"}])
def test_finetuning_can_continue_the_supernet_adagrad_state(space, data, options):
    from dataclasses import replace

    from ranknas.evaluator.training import TrainConfig
    from ranknas.supernet.scoring import score_on_supernet

    trainer = _trainer(space, data, **options)
    trainer.train(1000)
    sums = trainer.adagrad_sums()
    params = dict(trainer.supernet.named_parameters())
    assert sums and set(sums) <= set(params)
    assert all(sums[n].shape == params[n].shape for n in sums)
    assert "embedding.table.weight" in sums and float(sums["embedding.table.weight"].sum()) > 0
    arch = trainer.sampler.sample(0)
    sliced = trainer.supernet.extract_like(arch, sums)
    model = trainer.supernet.extract(arch)
    assert set(sliced) == {n for n, _ in model.named_parameters()}
    # huge accumulators freeze fine-tuning: continuing them must barely move the weights
    huge = {n: torch.full_like(t, 1e12) for n, t in sums.items()}
    cfg = replace(TrainConfig(examples=400, batch_size=200, lr=0.05), seed=0)
    frozen = score_on_supernet(trainer.supernet, space, arch, data, cfg, finetune="whole",
                               finetune_examples=400, adagrad_sums=huge)
    fresh = score_on_supernet(trainer.supernet, space, arch, data, cfg, finetune="none")
    assert frozen.metrics["ne"] == pytest.approx(fresh.metrics["ne"], abs=1e-4)
