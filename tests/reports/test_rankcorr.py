"""Rank-correlation diagnostics: statistics on synthetic inputs and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest

from ranknas.config import config_from_dict
from ranknas.errors import ConfigError
from ranknas.reports.rankcorr import STATISTICS, rank_statistics, run_rank_correlation

TINY = {"name": "rankcorr-test", "space": "dlrm",
        "data": {"spec": "synthetic", "rows": 3000, "seed": 0},
        "train": {"examples": 512, "batch_size": 256, "lr": 0.05}, "seed": 0,
        "strategies": [{"name": "random"}], "budget": {"trials": 1},
        "tracking": {"uri": None}}

#: A quick run: 4 architectures, tiny supernet and fine-tuning budgets, no bootstrap.
SMALL = {"archs": 4, "supernet_examples": 1024, "finetune_examples": 256, "bootstrap": 0,
         "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One SMALL run of TINY, shared by the tests that reuse its standalone NEs:
    ``(rankcorr.json path, its document)``."""
    from ranknas.execution.standalone import torch_threads

    out = tmp_path_factory.mktemp("base")
    with torch_threads(1):
        doc = run_rank_correlation(config_from_dict(TINY), out, **SMALL)
    return out / "rankcorr.json", doc


def test_statistics_perfect_and_reversed_rankings():
    x = [0.80 + 0.01 * i for i in range(20)]
    same = rank_statistics(x, [2 * v for v in x], bootstrap=50, seed=1)
    assert set(same) == set(STATISTICS)
    assert same["kendall_tau"]["value"] == pytest.approx(1.0)
    assert same["spearman"]["value"] == pytest.approx(1.0)
    assert same["top10_overlap"]["value"] == 1.0
    assert same["kendall_tau"]["lo"] == pytest.approx(1.0)
    assert same["kendall_tau"]["hi"] == pytest.approx(1.0)
    rev = rank_statistics(x, [-v for v in x], bootstrap=50, seed=1)
    assert rev["kendall_tau"]["value"] == pytest.approx(-1.0)
    assert rev["spearman"]["value"] == pytest.approx(-1.0)
    assert rev["top10_overlap"]["value"] == 0.0
    assert rev["top10_overlap"]["hi"] == 0.0
    none = rank_statistics(x, x, bootstrap=0)
    assert math.isnan(none["spearman"]["lo"]) and none["spearman"]["value"] == 1.0


def test_statistics_reject_bad_input():
    with pytest.raises(ConfigError, match="equal length"):
        rank_statistics([1.0, 2.0], [1.0])
    with pytest.raises(ConfigError, match="at least 2"):
        rank_statistics([1.0], [1.0])
    with pytest.raises(ConfigError, match="finite"):
        rank_statistics([1.0, math.nan], [1.0, 2.0])


def test_run_rejects_bad_options(tmp_path):
    config = config_from_dict(TINY)
    with pytest.raises(ConfigError, match="finetune"):
        run_rank_correlation(config, tmp_path, archs=6, finetune="none")
    with pytest.raises(ConfigError, match="finetune"):
        run_rank_correlation(config, tmp_path, archs=6, finetune=["last", "last"])
    with pytest.raises(ConfigError, match="sampler"):
        run_rank_correlation(config, tmp_path, archs=6, sampler="nope")
    with pytest.raises(ConfigError, match="archs"):
        run_rank_correlation(config, tmp_path, archs=1)


def test_rank_correlation_end_to_end(tmp_path, capsys):
    import mlflow

    from ranknas.reports.tracking import local_store_uri

    out = tmp_path / "rc"
    doc = run_rank_correlation(config_from_dict(TINY), out, archs=6, supernet_examples=2048,
                               finetune=["last", "whole"], finetune_examples=256, bootstrap=50)
    assert "kendall_tau" in capsys.readouterr().out
    saved = json.loads((out / "rankcorr.json").read_text())
    assert saved["mlflow_run_id"] == doc["mlflow_run_id"]
    rows = saved["rows"]
    assert len(rows) == 6 and len({r["arch_id"] for r in rows}) == 6
    for row in rows:
        for key in ("standalone_ne", "supernet_ne_no_finetune", "supernet_ne_finetune_last",
                    "supernet_ne_finetune_whole"):
            assert row[key] is not None and math.isfinite(row[key])
    summary = saved["summary"]
    assert summary["archs_used"] == 6
    for variant in ("no_finetune", "finetune_last", "finetune_whole"):
        for name in STATISTICS:
            stat = summary[variant][name]
            assert set(stat) == {"value", "lo", "hi"}
            if all(stat[k] is not None for k in stat):
                assert stat["lo"] <= stat["value"] + 1e-12
                assert stat["value"] <= stat["hi"] + 1e-12
    assert (out / "rankcorr.png").stat().st_size > 0

    client = mlflow.MlflowClient(tracking_uri=local_store_uri(out))
    run = client.get_run(doc["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert "finetune_whole.kendall_tau" in run.data.metrics
    assert "no_finetune.spearman" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"rankcorr.json", "rankcorr.png"} <= artifacts


def test_standalone_results_are_reused_only_when_they_match(tmp_path, base):
    config = config_from_dict(TINY)
    path, first = base
    again = run_rank_correlation(config, tmp_path / "b", **SMALL, warmup_steps=2,
                                 standalone_from=path)
    assert [r["standalone_ne"] for r in again["rows"]] == \
        [r["standalone_ne"] for r in first["rows"]]
    assert again["options"]["warmup_steps"] == 2
    # a second seed: only it is trained; the reference is the mean, and the seeds' agreement
    # is reported as the noise ceiling
    two = run_rank_correlation(config, tmp_path / "d", **SMALL, standalone_seeds=2,
                               standalone_from=path)
    for old, row in zip(first["rows"], two["rows"], strict=True):
        assert row["standalone_nes"][0] == old["standalone_ne"]
        assert row["standalone_ne"] == pytest.approx(sum(row["standalone_nes"]) / 2)
    assert set(two["summary"]["standalone_repeat"]) == set(STATISTICS)
    assert "standalone_single" not in two["summary"]
    # a third: one training (seed 0) is also ranked against the mean of the others
    three = run_rank_correlation(config, tmp_path / "e", **SMALL, standalone_seeds=3,
                                 standalone_from=tmp_path / "d" / "rankcorr.json")
    nes = [row["standalone_nes"] for row in three["rows"]]
    assert [n[:2] for n in nes] == [row["standalone_nes"] for row in two["rows"]]
    want = rank_statistics([(n[1] + n[2]) / 2 for n in nes], [n[0] for n in nes], bootstrap=0)
    assert {k: v["value"] for k, v in three["summary"]["standalone_single"].items()} == \
        {k: v["value"] for k, v in want.items()}
    with pytest.raises(ConfigError, match="standalone_from"):
        run_rank_correlation(config, tmp_path / "c", archs=4, standalone_examples=512,
                             standalone_from=path, progress=False)
    with pytest.raises(ConfigError, match="standalone_from"):
        run_rank_correlation(config, tmp_path / "c", archs=4,
                             standalone_from=tmp_path / "missing.json", progress=False)


def test_workers_give_the_same_results_as_one_process(tmp_path):
    config = config_from_dict(TINY)
    kwargs = {**SMALL, "standalone_seeds": 2}
    one = run_rank_correlation(config, tmp_path / "one", **kwargs)
    two = run_rank_correlation(config, tmp_path / "two", workers=2, **kwargs)
    keys = ("arch_id", "standalone_nes", "supernet_ne_no_finetune", "supernet_ne_finetune_last")
    assert [[r[k] for k in keys] for r in two["rows"]] == \
        [[r[k] for k in keys] for r in one["rows"]]
    assert not list((tmp_path / "two").glob("*.pt"))  # weights go once every score is in
    with pytest.raises(ConfigError, match="workers"):
        run_rank_correlation(config, tmp_path / "bad", workers=0, **kwargs)


def _dies_after(n: int, real, calls: list):
    """``real``, recording its tasks in ``calls``, until the run is killed at task ``n + 1``."""
    def task(*args):
        if len(calls) == n:
            raise KeyboardInterrupt  # the run is killed mid-way
        calls.append(args)
        return real(*args)
    return task


def test_a_killed_run_resumes_its_standalone_trainings(tmp_path, monkeypatch):
    from ranknas.execution import pool

    config = config_from_dict(TINY)
    kwargs = {**SMALL, "standalone_seeds": 2}
    full = run_rank_correlation(config, tmp_path / "full", **kwargs)
    real, calls = pool.standalone_task, []
    monkeypatch.setattr(pool, "standalone_task", _dies_after(3, real, calls))
    with pytest.raises(KeyboardInterrupt):
        run_rank_correlation(config, tmp_path / "cut", **kwargs)
    journal = (tmp_path / "cut/standalone.jsonl").read_text().splitlines()
    assert len(journal) == 3
    (tmp_path / "cut/standalone.jsonl").write_text("\n".join(journal) + '\n{"torn')
    calls.clear()
    monkeypatch.setattr(pool, "standalone_task", lambda *t: calls.append(t) or real(*t))
    resumed = run_rank_correlation(config, tmp_path / "cut", **kwargs)
    assert len(calls) == 8 - 3  # only the missing trainings ran
    assert [r["standalone_nes"] for r in resumed["rows"]] == \
        [r["standalone_nes"] for r in full["rows"]]


def test_a_killed_run_resumes_its_supernet_scores(tmp_path, monkeypatch, base):
    """Scores are journaled as they finish; a rerun loads the saved supernet instead of
    training it and scores only the architectures left, with the same results."""
    from ranknas.execution import pool
    from ranknas.supernet import SupernetTrainer

    path, full = base
    config = config_from_dict(TINY)
    kwargs = {**SMALL, "standalone_from": path}
    real, calls = pool.score_task, []
    monkeypatch.setattr(pool, "score_task", _dies_after(2, real, calls))
    with pytest.raises(KeyboardInterrupt):
        run_rank_correlation(config, tmp_path, **kwargs)
    assert len(list(tmp_path.glob("supernet-*.pt"))) == 1
    calls.clear()
    monkeypatch.setattr(pool, "score_task", lambda *t: calls.append(t) or real(*t))
    trains = []
    train = SupernetTrainer.train
    monkeypatch.setattr(SupernetTrainer, "train",
                        lambda self, *a, **k: trains.append(1) or train(self, *a, **k))
    resumed = run_rank_correlation(config, tmp_path, **kwargs)
    assert len(calls) == SMALL["archs"] - 2 and not trains
    keys = ("supernet_ne_no_finetune", "supernet_ne_finetune_last")
    assert [[r[k] for k in keys] for r in resumed["rows"]] == \
        [[r[k] for k in keys] for r in full["rows"]]
    (trained,), (want,) = resumed["summary"]["supernet"], full["summary"]["supernet"]
    assert trained["loss"] == want["loss"] and trained["steps"] == want["steps"]
    assert not list(tmp_path.glob("*.pt"))
    calls.clear()  # everything journaled: nothing is trained or scored again
    again = run_rank_correlation(config, tmp_path, **kwargs)
    assert not calls and not trains and again["rows"] == resumed["rows"]
    other = run_rank_correlation(config, tmp_path, **{**kwargs, "finetune_examples": 128})
    assert len(calls) == SMALL["archs"] and trains  # other options: other journal entries
    assert other["options"]["finetune_examples"] == 128


def test_a_supernet_replicate_keeps_the_sample_and_the_standalone_nes(tmp_path, base):
    path, first = base
    other = run_rank_correlation(config_from_dict(TINY), tmp_path / "b", supernet_seed=7,
                                 standalone_from=path, **SMALL)
    assert [r["arch_id"] for r in other["rows"]] == [r["arch_id"] for r in first["rows"]]
    assert [r["standalone_ne"] for r in other["rows"]] == \
        [r["standalone_ne"] for r in first["rows"]]
    assert [r["supernet_ne_no_finetune"] for r in other["rows"]] != \
        [r["supernet_ne_no_finetune"] for r in first["rows"]]
    assert other["options"]["supernet_seed"] == 7


def test_supernet_replicates_are_averaged_and_checked_against_each_other(tmp_path, base):
    config = config_from_dict(TINY)
    path, one = base
    two = run_rank_correlation(config, tmp_path / "two", supernet_replicates=2,
                               standalone_from=path, **SMALL)
    for a, b in zip(one["rows"], two["rows"], strict=True):
        first, second = b["supernet_nes_finetune_last"]
        assert first == a["supernet_ne_finetune_last"]  # replicate 0 is the default supernet
        assert b["supernet_ne_finetune_last"] == pytest.approx((first + second) / 2)
    assert set(two["summary"]["finetune_last_repeat"]) == set(STATISTICS)
    assert len(two["summary"]["supernet"]) == 2
    with pytest.raises(ConfigError, match="supernet_replicates"):
        run_rank_correlation(config, tmp_path / "bad", supernet_replicates=0, **SMALL)


def test_supernet_train_options_choose_the_execution(tmp_path, base):
    config = config_from_dict(TINY)
    path, first = base
    seg = run_rank_correlation(config, tmp_path / "b", standalone_from=path,
                               supernet_train={"execution": "segmented"}, **SMALL)
    assert seg["options"]["supernet_train"] == {"execution": "segmented"}
    assert first["options"]["supernet_train"] == {}
    assert all(math.isfinite(r["supernet_ne_finetune_last"]) for r in seg["rows"])
    with pytest.raises(ConfigError, match=r"supernet_train\.lr"):
        run_rank_correlation(config, tmp_path / "c", supernet_train={"lr": 0.1}, **SMALL)
    with pytest.raises(ConfigError) as err:
        run_rank_correlation(config, tmp_path / "d", supernet_train={"execution": "nope"},
                             **SMALL)
    assert "execution" in err.value.where
    assert not (tmp_path / "d" / "standalone.jsonl").exists()  # before any training


def test_a_missing_tracking_store_fails_before_any_training(tmp_path, monkeypatch):
    import ranknas.reports.tracking as tracking

    def missing():
        raise ConfigError("tracking", "MLflow is not installed: pip install mlflow")

    monkeypatch.setattr(tracking, "_mlflow", missing)
    with pytest.raises(ConfigError, match="MLflow is not installed"):
        run_rank_correlation(config_from_dict(TINY), tmp_path, **SMALL)
    assert not (tmp_path / "standalone.jsonl").exists()  # nothing was trained


def test_disabled_tracking_runs_without_mlflow(tmp_path, monkeypatch):
    import ranknas.reports.tracking as tracking

    def missing():
        raise AssertionError("MLflow was used with tracking disabled")

    monkeypatch.setattr(tracking, "_mlflow", missing)
    doc = run_rank_correlation(config_from_dict({**TINY, "tracking": {"enabled": False}}),
                               tmp_path, **SMALL)
    assert doc["mlflow_run_id"] is None and (tmp_path / "rankcorr.json").exists()
