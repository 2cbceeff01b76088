"""The synthetic default: determinism, shapes, CTR, power law, splits, and a real teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from ranknas.errors import DataError
from ranknas.evaluator.data import (
    SyntheticConfig,
    build_teacher,
    generate_synthetic,
    make_synthetic,
)
from ranknas.evaluator.data.categorical import split_sizes
from ranknas.evaluator.data.synthetic import DEFAULT_CARDINALITIES


def normalized_entropy(logits: np.ndarray, labels: np.ndarray, ctr: float) -> float:
    p = np.clip(1.0 / (1.0 + np.exp(-logits)), 1e-7, 1 - 1e-7)
    logloss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    return float(logloss / -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr)))


def test_same_seed_same_tensors_other_seed_differs() -> None:
    a, b, c = make_synthetic(3000, 7), make_synthetic(3000, 7), make_synthetic(3000, 8)
    for name in ("train", "valid", "test"):
        x, y = a.split(name), b.split(name)
        assert torch.equal(x.dense, y.dense)
        assert torch.equal(x.sparse, y.sparse)
        assert torch.equal(x.labels, y.labels)
    assert not torch.equal(a.train.sparse, c.train.sparse)
    assert not torch.equal(a.train.labels, c.train.labels)


def test_teacher_depends_on_seed_not_on_rows() -> None:
    small, large = build_teacher(SyntheticConfig(rows=10)), build_teacher(SyntheticConfig())
    assert small.bias == large.bias
    assert torch.equal(small.factors2, large.factors2)
    other = build_teacher(SyntheticConfig(seed=1))
    assert not torch.equal(other.factors2, large.factors2)


def test_shapes_dtypes_and_cardinality_bounds() -> None:
    data = make_synthetic(5000, 0)
    assert data.schema.num_dense == 13
    assert data.schema.cardinalities == DEFAULT_CARDINALITIES
    assert 10 <= max(DEFAULT_CARDINALITIES) <= 20_000 and sum(DEFAULT_CARDINALITIES) < 1_000_000
    cards = torch.tensor(data.schema.cardinalities)
    for split in (data.train, data.valid, data.test):
        assert split.dense.dtype == torch.float32 and split.dense.shape[1] == 13
        assert split.sparse.dtype == torch.int64 and split.sparse.shape[1] == 26
        assert split.labels.dtype == torch.float32
        assert torch.isfinite(split.dense).all()
        assert (split.sparse >= 0).all() and (split.sparse < cards).all()
        assert set(split.labels.unique().tolist()) <= {0.0, 1.0}
    # Dense features are standardised-ish: no feature far off zero mean / unit scale.
    dense = data.train.dense
    assert dense.mean(0).abs().max() < 0.5 and dense.std(0).max() < 2.0


@pytest.mark.parametrize("ctr", [0.2, 0.25, 0.3])
def test_realised_ctr_is_near_base_ctr(ctr: float) -> None:
    data = make_synthetic(40_000, 3, base_ctr=ctr)
    assert abs(data.background_ctr - ctr) < 0.03


def test_category_frequencies_follow_a_power_law() -> None:
    data = make_synthetic(50_000, 0)
    big = int(np.argmax(DEFAULT_CARDINALITIES))  # the 20000-row field
    counts = np.sort(np.bincount(data.train.sparse[:, big].numpy(),
                                 minlength=DEFAULT_CARDINALITIES[big]))[::-1]
    assert counts[0] > 50 * max(1, int(np.median(counts[counts > 0])))
    assert counts[:20].sum() > 0.3 * counts.sum()  # 0.1% of the ids hold > 30% of the rows
    # Log-log slope of rank vs count over the head is steep, as in a Zipf law (s in 1.1..1.5).
    ranks = np.arange(1, 51)
    slope = np.polyfit(np.log(ranks), np.log(counts[:50]), 1)[0]
    assert -2.0 < slope < -0.7


def test_split_sizes() -> None:
    data = make_synthetic(1000, 0)
    assert (len(data.train), len(data.valid), len(data.test)) == (800, 100, 100)
    data = make_synthetic(1000, 0, splits=(0.5, 0.25, 0.25))
    assert (len(data.train), len(data.valid), len(data.test)) == (500, 250, 250)
    assert split_sizes(1, (0.8, 0.1, 0.1)) == (1, 0, 0)
    assert split_sizes(7, (0.8, 0.1, 0.1)) == (6, 0, 1)
    assert sum(split_sizes(12345, (0.7, 0.2, 0.1))) == 12345


def test_tiny_and_odd_configs_work() -> None:
    data = make_synthetic(10, 1, num_dense=0, cardinalities=[1, 2, 3])
    assert data.train.dense.shape == (8, 0)
    assert data.schema.cardinalities == (1, 2, 3)
    one_field = make_synthetic(50, 0, cardinalities=[5])  # no pairs, no triples
    assert one_field.train.sparse.shape == (40, 1)


@pytest.mark.parametrize("kwargs, where", [
    ({"base_ctr": 1.2}, "base_ctr"),
    ({"splits": (0.5, 0.6, 0.1)}, "splits"),
    ({"cardinalities": [10, 0]}, "cardinalities"),
    ({"num_pairs": 3.0, "bogus": 1}, "synthetic.bogus"),
])
def test_bad_options_raise_data_error(kwargs: dict, where: str) -> None:
    with pytest.raises(DataError) as err:
        make_synthetic(100, 0, **kwargs)
    assert err.value.where == where


def test_rows_must_be_positive() -> None:
    with pytest.raises(DataError, match="rows"):
        make_synthetic(0)


def test_teacher_has_interactions_that_logistic_regression_misses() -> None:
    """A one-hot logistic regression stays clearly above the teacher's NE on held-out rows."""
    data, teacher = generate_synthetic(SyntheticConfig(rows=20_000, seed=0,
                                                       splits=(0.8, 0.2, 0.0)))
    # One-hot columns only for ids seen in training (an unseen id's weight would stay 0 anyway).
    gid_train = data.train.sparse.numpy() + teacher.offsets.numpy()
    seen = np.unique(gid_train)

    def features(split):  # [n, seen ids + D]: one-hot sparse ids and the dense features
        gid = split.sparse.numpy() + teacher.offsets.numpy()
        col = np.searchsorted(seen, gid)
        hit = seen[np.minimum(col, len(seen) - 1)] == gid
        rows = np.repeat(np.arange(len(gid)), gid.shape[1])
        onehot = sp.csr_matrix((hit.ravel().astype(float), (rows, np.where(hit, col, 0).ravel())),
                               shape=(len(gid), len(seen)))
        return sp.hstack([onehot, sp.csr_matrix(split.dense.numpy())]).tocsr()

    y_train, y_valid = data.train.labels.numpy(), data.valid.labels.numpy()
    ctr = float(y_valid.mean())
    model = LogisticRegression(C=0.1, max_iter=200).fit(features(data.train), y_train)
    lr_ne = normalized_entropy(model.decision_function(features(data.valid)), y_valid, ctr)
    teacher_ne = normalized_entropy(teacher.batch_logits(data.valid).numpy(), y_valid, ctr)
    print(f"teacher NE {teacher_ne:.4f}, logistic regression NE {lr_ne:.4f}")
    assert teacher_ne < 0.8
    assert lr_ne > teacher_ne + 0.1
    # Each interaction term really contributes: a non-zero scaled std on real rows.
    terms = teacher.terms(data.train.dense, data.train.sparse) * teacher.term_scale
    assert (terms.std(0) > 0.3).all()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cards=st.lists(st.integers(1, 300), min_size=1, max_size=6),
       num_dense=st.integers(0, 4), rows=st.integers(1, 200), seed=st.integers(0, 2**31))
def test_any_small_config_gives_valid_tensors(cards: list[int], num_dense: int, rows: int,
                                              seed: int) -> None:
    data = make_synthetic(rows, seed, num_dense=num_dense, cardinalities=cards)
    n = len(data.train) + len(data.valid) + len(data.test)
    assert n == rows and len(data.train) >= 1
    for split in (data.train, data.valid, data.test):
        assert split.dense.shape == (len(split), num_dense)
        assert (split.sparse >= 0).all() and (split.sparse < torch.tensor(cards)).all()
        assert torch.isfinite(split.dense).all()
