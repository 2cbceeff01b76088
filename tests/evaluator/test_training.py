"""Training loop: learning, determinism, sparse updates, divergence, config validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ranknas.errors import ConfigError, TrainingDiverged
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.schema import Batch, DataSchema
from ranknas.evaluator.training import TrainConfig, evaluate, train, train_and_evaluate

NUM_DENSE, CARDS = 4, (20, 30)


class TinyModel(nn.Module):
    """One fused sparse embedding table (per-field offsets) plus a linear over dense."""

    def __init__(self, seed: int = 0, dim: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        rows = sum(CARDS)
        self.register_buffer("offsets", torch.tensor([0, *CARDS[:-1]]).cumsum(0))
        # from_pretrained / explicit Parameters: init from our generator, not the global RNG.
        self.emb = nn.Embedding.from_pretrained(
            torch.randn(rows, dim, generator=g) * 0.01, freeze=False, sparse=True)
        self.w_dense = nn.Parameter(torch.randn(NUM_DENSE, generator=g) * 0.01)
        self.w_emb = nn.Parameter(torch.randn(dim, generator=g) * 0.1)
        self.bias = nn.Parameter(torch.zeros(()))
        self.dropout = nn.Dropout(0.1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        e = self.emb(sparse + self.offsets).sum(1)  # [B, dim]
        return dense @ self.w_dense + self.dropout(e) @ self.w_emb + self.bias  # [B]


def make_data(n: int = 2048, seed: int = 0) -> CTRData:
    """Learnable synthetic CTR data: clicks depend on one dense feature and field-0 ids."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, NUM_DENSE, generator=g)
    sparse = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], dim=1)
    id_effect = torch.randn(CARDS[0], generator=g) * 1.5
    logit = 1.5 * dense[:, 0] + id_effect[sparse[:, 0]] - 1.0
    labels = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    full = Batch(dense, sparse, labels)

    def part(a: int, b: int) -> Batch:
        return Batch(full.dense[a:b], full.sparse[a:b], full.labels[a:b])

    cut1, cut2 = int(n * 0.7), int(n * 0.85)
    return CTRData(DataSchema(NUM_DENSE, CARDS), part(0, cut1), part(cut1, cut2), part(cut2, n))


@pytest.fixture(scope="module")
def data() -> CTRData:
    return make_data()


@pytest.mark.parametrize("optimizer,lr", [("adagrad", 0.1), ("adam", 0.02), ("sgd", 0.5)])
def test_learns(data: CTRData, optimizer: str, lr: float) -> None:
    model = TinyModel()
    before = evaluate(model, data.valid, data.background_ctr)
    cfg = TrainConfig(steps=150, batch_size=128, optimizer=optimizer, lr=lr, log_every=20)
    logs: list[dict] = []
    result = train(model, data, cfg, progress=logs.append)
    after = evaluate(model, data.valid, data.background_ctr)
    assert after["ne"] < 0.9 < before["ne"]
    assert after["logloss"] < before["logloss"]
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert [entry["step"] for entry in logs] == [*range(20, 151, 20), 150]
    assert result.steps == 150 and result.examples == 150 * 128
    assert result.final_loss == pytest.approx(logs[-1]["loss"])
    assert result.examples_per_second > 0


def test_deterministic_under_seed(data: CTRData) -> None:
    cfg = TrainConfig(steps=40, batch_size=64, lr=0.05, seed=7, grad_clip=1.0)
    runs = []
    for _ in range(2):
        model = TinyModel(seed=1)
        result = train(model, data, cfg)
        runs.append((result.final_loss, {k: v.clone() for k, v in model.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key]), key
    other = TinyModel(seed=1)
    train(other, data, TrainConfig(steps=40, batch_size=64, lr=0.05, seed=8, grad_clip=1.0))
    assert not torch.equal(other.emb.weight, runs[0][1]["emb.weight"])


def test_train_leaves_global_rng_untouched(data: CTRData) -> None:
    state = torch.random.get_rng_state()
    train(TinyModel(), data, TrainConfig(steps=3, batch_size=32))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sgd"])
def test_sparse_grads_touch_only_looked_up_rows(optimizer: str) -> None:
    n = 64
    g = torch.Generator().manual_seed(0)
    # Field 0 uses ids 0..4 only, field 1 ids 0..9 only: other rows are never looked up.
    sparse = torch.stack([torch.randint(0, 5, (n,), generator=g),
                          torch.randint(0, 10, (n,), generator=g)], dim=1)
    batch = Batch(torch.randn(n, NUM_DENSE, generator=g), sparse,
                  (torch.rand(n, generator=g) < 0.3).float())
    data = CTRData(DataSchema(NUM_DENSE, CARDS), batch, batch, batch)
    model = TinyModel()
    model.emb.weight.register_hook(lambda grad: grads.append(grad))
    grads: list[torch.Tensor] = []
    before = model.emb.weight.detach().clone()
    train(model, data, TrainConfig(steps=1, batch_size=n, optimizer=optimizer, lr=0.1))
    assert grads and grads[0].is_sparse
    touched = torch.zeros(sum(CARDS), dtype=torch.bool)
    touched[sparse[:, 0]] = True
    touched[sparse[:, 1] + CARDS[0]] = True
    after = model.emb.weight.detach()
    assert torch.equal(after[~touched], before[~touched])
    assert not torch.equal(after[touched], before[touched])


class NanAfter(TinyModel):
    """Produces finite logits for ``good`` forward calls, then nan."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good, self.calls = good, 0

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = super().forward(dense, sparse)
        return out * math.nan if self.calls > self.good else out


@pytest.mark.parametrize("check_every", [None, 1, 7])
def test_nan_raises_training_diverged_with_step(data: CTRData, check_every: int | None) -> None:
    cfg = TrainConfig(steps=30, batch_size=32, check_every=check_every)
    with pytest.raises(TrainingDiverged) as err:
        train(NanAfter(good=10), data, cfg)
    assert err.value.step == 11
    assert err.value.reason == "loss is nan"


def test_examples_budget_is_exact(data: CTRData) -> None:
    result = train(TinyModel(), data, TrainConfig(examples=1000, batch_size=128))
    assert result.examples == 1000 and result.steps == 8
    # A batch larger than the train split: each step sees the whole (shuffled) split.
    small = make_data(n=100)
    result = train(TinyModel(), small, TrainConfig(examples=150, batch_size=1024))
    assert result.examples == 150 and result.steps == 3


def test_train_and_evaluate_reports(data: CTRData) -> None:
    out = train_and_evaluate(TinyModel(), data, TrainConfig(steps=20, batch_size=64, lr=0.1))
    for key in ("ne", "logloss", "auc", "calibration", "ctr", "count", "examples", "seconds",
                "steps"):
        assert key in out
    assert out["count"] == len(data.valid) and out["steps"] == 20 and out["examples"] == 1280


def test_wrong_logit_shape_is_config_error(data: CTRData) -> None:
    class Column(TinyModel):
        def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
            return super().forward(dense, sparse)[:, None]

    with pytest.raises(ConfigError, match="model"):
        train(Column(), data, TrainConfig(steps=1))


@pytest.mark.parametrize("kwargs,field", [
    ({}, "steps"),
    ({"steps": 1, "examples": 5}, "steps"),
    ({"steps": 0}, "steps"),
    ({"examples": -1}, "examples"),
    ({"steps": 1, "batch_size": 0}, "batch_size"),
    ({"steps": 1, "optimizer": "rmsprop"}, "optimizer"),
    ({"steps": 1, "lr": 0.0}, "lr"),
    ({"steps": 1, "lr": math.inf}, "lr"),
    ({"steps": 1, "sparse_lr": -1.0}, "sparse_lr"),
    ({"steps": 1, "weight_decay": -0.1}, "weight_decay"),
    ({"steps": 1, "eps": 0.0}, "eps"),
    ({"steps": 1, "seed": -1}, "seed"),
    ({"steps": 1, "device": "gpu0"}, "device"),
    ({"steps": 1, "eval_batch_size": 0}, "eval_batch_size"),
    ({"steps": 1, "grad_clip": 0.0}, "grad_clip"),
    ({"steps": 1, "log_every": 0}, "log_every"),
    ({"steps": 1, "check_every": 0}, "check_every"),
    ({"steps": 1.5}, "steps"),
])
def test_bad_config_names_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(**kwargs)
    assert err.value.where == field


def test_optimizer_error_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match="adagrad, adam, sgd"):
        TrainConfig(steps=1, optimizer="rmsprop")


def test_bce_reference(data: CTRData) -> None:
    # evaluate's log loss is the BCE the trainer minimises.
    model = TinyModel()
    out = evaluate(model, data.valid, data.background_ctr, batch_size=100)
    model.eval()
    with torch.no_grad():
        ref = F.binary_cross_entropy_with_logits(
            model(data.valid.dense, data.valid.sparse).double(), data.valid.labels.double())
    assert out["logloss"] == pytest.approx(float(ref), rel=1e-9)
    assert model.training is False
