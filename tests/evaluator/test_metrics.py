"""Metrics against sklearn and closed forms; merging states is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from ranknas.errors import ConfigError
from ranknas.evaluator.metrics import (
    MetricState,
    compute_auc,
    compute_calibration,
    compute_logloss,
    compute_ne,
)


def _data(n: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g) * 2.0
    labels = (torch.rand(n, generator=g) < torch.sigmoid(logits)).float()
    return logits, labels


def test_logloss_and_ne_match_sklearn_and_numpy() -> None:
    logits, labels = _data()
    state = MetricState()
    state.update(logits, labels)
    p_hat = torch.sigmoid(logits.double()).numpy()
    y = labels.numpy()
    expected = log_loss(y, p_hat)
    numpy_ll = -np.mean(y * np.log(p_hat) + (1 - y) * np.log(1 - p_hat))
    bg = 0.3
    out = state.compute(background_ctr=bg)
    assert out["logloss"] == pytest.approx(expected, rel=1e-9)
    assert out["logloss"] == pytest.approx(numpy_ll, rel=1e-9)
    entropy = -(bg * np.log(bg) + (1 - bg) * np.log(1 - bg))
    assert out["ne"] == pytest.approx(numpy_ll / entropy, rel=1e-9)
    assert out["count"] == 500
    assert out["ctr"] == pytest.approx(float(y.mean()))


def test_logloss_is_stable_for_saturated_logits() -> None:
    state = MetricState()
    state.update(torch.tensor([1000.0, -1000.0, 1000.0]), torch.tensor([1.0, 0.0, 0.0]))
    out = state.compute(0.5)
    assert math.isfinite(out["logloss"])
    assert out["logloss"] == pytest.approx(1000.0 / 3)


def test_ne_of_predicting_background_ctr_is_one() -> None:
    n, p = 1000, 0.17
    labels = torch.zeros(n)
    labels[: int(n * p)] = 1.0
    logits = torch.full((n,), math.log(p / (1 - p)))
    state = MetricState()
    state.update(logits, labels)
    out = state.compute(background_ctr=p)
    assert out["ne"] == pytest.approx(1.0, abs=1e-6)
    assert out["calibration"] == pytest.approx(1.0, abs=1e-6)
    assert out["auc"] == pytest.approx(0.5)  # one score for all: every pair is a tie


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_ne_rejects_degenerate_background_ctr(bad: float) -> None:
    with pytest.raises(ConfigError) as err:
        compute_ne(1.0, 10, bad)
    assert err.value.where == "background_ctr"


def test_logloss_needs_examples() -> None:
    with pytest.raises(ConfigError, match="count"):
        compute_logloss(0.0, 0)
    with pytest.raises(ConfigError):
        MetricState().compute(0.5)


def test_calibration() -> None:
    assert compute_calibration(30.0, 20.0) == pytest.approx(1.5)
    assert compute_calibration(torch.tensor(5.0), torch.tensor(10.0)) == pytest.approx(0.5)
    assert math.isnan(compute_calibration(3.0, 0.0))  # no clicks: undefined
    logits, labels = _data()
    state = MetricState()
    state.update(logits, labels)
    expected = torch.sigmoid(logits.double()).mean() / labels.double().mean()
    assert state.compute(0.5)["calibration"] == pytest.approx(float(expected), rel=1e-9)


def test_auc_with_ties_matches_sklearn() -> None:
    preds = torch.tensor([0.1, 0.4, 0.4, 0.4, 0.8, 0.8, 0.2, 0.9])
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    assert compute_auc(preds, labels) == pytest.approx(roc_auc_score(labels, preds))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=80))
def test_auc_matches_sklearn_hypothesis(pairs: list[tuple[int, bool]]) -> None:
    # Scores drawn from a handful of integers, so ties are frequent.
    preds = torch.tensor([float(s) for s, _ in pairs])
    labels = torch.tensor([float(y) for _, y in pairs])
    got = compute_auc(preds, labels)
    if labels.min() == labels.max():
        assert math.isnan(got)
    else:
        assert got == pytest.approx(roc_auc_score(labels.numpy(), preds.numpy()), abs=1e-12)


def test_auc_edge_cases() -> None:
    assert math.isnan(compute_auc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0])))
    assert math.isnan(compute_auc(torch.tensor([]), torch.tensor([])))
    assert math.isnan(compute_auc(torch.tensor([0.1, float("nan")]), torch.tensor([0.0, 1.0])))
    assert compute_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    with pytest.raises(ConfigError):
        compute_auc(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 0.5]))
    with pytest.raises(ConfigError):
        compute_auc(torch.tensor([0.1, 0.9, 0.3]), torch.tensor([0.0, 1.0]))


def test_state_auc_uses_logits_and_matches_sklearn() -> None:
    logits, labels = _data()
    state = MetricState()
    for chunk in range(0, 500, 128):
        state.update(logits[chunk:chunk + 128], labels[chunk:chunk + 128])
    assert state.compute(0.5)["auc"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)


def test_merge_equals_single_state_over_concatenation() -> None:
    logits, labels = _data(n=700, seed=3)
    whole = MetricState()
    whole.update(logits, labels)
    a, b = MetricState(), MetricState()
    a.update(logits[:300], labels[:300])
    b.update(logits[300:500], labels[300:500])
    b.update(logits[500:], labels[500:])
    a_before = a.compute(0.4)
    merged = a.merge(b)
    got, want = merged.compute(0.4), whole.compute(0.4)
    assert got["count"] == want["count"] == 700
    for key in ("ne", "logloss", "auc", "calibration", "ctr"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    assert a.compute(0.4) == a_before  # merge is pure
    assert MetricState().merge(a).compute(0.4) == a_before


def test_update_rejects_mismatched_shapes() -> None:
    with pytest.raises(ConfigError, match="logits"):
        MetricState().update(torch.zeros(3), torch.zeros(4))
