"""EvalResult: read-only metrics that still survive pickling (process pools, Ray)."""

from __future__ import annotations

import math
import pickle

import pytest

from ranknas.evaluator.results import EvalResult, Status


def test_result_pickles_with_its_metrics_read_only():
    res = EvalResult("abc", Status.FAILED, {"ne": math.nan, "flops": 3}, examples=7,
                     seconds=1.5, reason="diverged")
    back = pickle.loads(pickle.dumps(res))
    assert back.to_json()["metrics"]["flops"] == 3.0
    assert math.isnan(back.metrics["ne"])
    assert (back.arch_id, back.status, back.examples, back.reason) == \
        ("abc", Status.FAILED, 7, "diverged")
    with pytest.raises(TypeError):
        back.metrics["ne"] = 1.0  # type: ignore[index]
