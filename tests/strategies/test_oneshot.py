"""The one-shot strategy: supernet training, inner search on the supernet, top-k retrain."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from ranknas.errors import ConfigError
from ranknas.evaluator.results import EvalResult, Objective, Status
from ranknas.execution.base import EvalJob
from ranknas.execution.standalone import torch_threads
from ranknas.strategies import make_strategy
from ranknas.strategies.oneshot import OneShot
from ranknas.strategies.oneshot_scoring import CandidateScorer

OPTIONS = {"supernet_examples": 2048, "candidates": 6, "top_k": 2, "finetune": "last",
           "finetune_examples": 256, "inner_options": {"population": 4, "sample_size": 2}}
NE = (Objective.named("ne"),)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def job():
    return EvalJob("dlrm", {"spec": "synthetic", "rows": 3000, "seed": 0},
                   {"examples": 1024, "batch_size": 256}, seed=0)


def _make(job, objectives=NE, seed=0, **options):
    strategy = make_strategy("oneshot", job.evaluator().space, objectives, seed=seed,
                             **{**OPTIONS, **options})
    strategy.attach(job)
    return strategy


def _drain(strategy):
    out = []
    while (proposal := strategy.ask()) is not None:
        out.append(proposal)
        strategy.tell(proposal, EvalResult(proposal.arch.arch_id, Status.OK, {"ne": 0.9},
                                           examples=1024))
    return out


@pytest.fixture(scope="module")
def run(job):
    with torch_threads(1):
        strategy = _make(job)
        return strategy, _drain(strategy)


def test_proposes_top_k_then_none(run, job):
    strategy, proposals = run
    space = job.evaluator().space
    assert len(proposals) == 2
    assert len({p.arch.arch_id for p in proposals}) == 2
    for i, p in enumerate(proposals):
        space.validate(p.arch)
        assert p.trial_id == i
        assert p.meta["stage"] == "retrain" and p.meta["rank"] == i
    assert proposals[0].meta["supernet_ne"] <= proposals[1].meta["supernet_ne"]
    assert proposals[0].meta["cost_examples"] == 2048 + 6 * 256
    assert "cost_examples" not in proposals[1].meta
    assert strategy.ask() is None
    json.dumps([dict(p.meta) for p in proposals])


def test_candidates_scored_on_the_supernet(run):
    strategy, proposals = run
    scored = strategy.candidates_scored
    assert len(scored) == 6
    assert all(math.isfinite(c["ne"]) and c["flops"] > 0 and c["params"] > 0 for c in scored)
    best = min(c["ne"] for c in scored)
    assert proposals[0].meta["supernet_ne"] == best
    assert [s["stage"] for s in strategy.stages] == ["supernet", "search"]
    assert strategy.stages[0]["examples"] == 2048


def test_summary_reports_every_stage_as_metric_series(run):
    strategy, proposals = run
    metrics = strategy.summary()["metrics"]
    assert metrics["supernet.examples"] == [[0, 2048.0]]
    assert metrics["supernet.graphs_captured"] == [[0, 0.0]]  # CPU: no CUDA graphs
    assert metrics["search.candidates"][0][1] == len(strategy.candidates_scored)
    assert [p[0] for p in metrics["search.supernet_ne"]] == list(range(6))
    best = [p[1] for p in metrics["search.best_supernet_ne"]]
    assert best == sorted(best, reverse=True)
    assert metrics["supernet.loss"] and all(math.isfinite(v) for _, v in metrics["supernet.loss"])
    assert [p[0] for p in metrics["retrain.ne"]] == [p.meta["rank"] for p in proposals]
    json.dumps(strategy.summary())  # JSON-able as saved by the loop


def test_study_constraints_apply_to_the_inner_search(job):
    from ranknas.strategies import Constraints

    space = job.evaluator().space
    schema = job.evaluator().data.schema
    flops = sorted(space.materialize(space.sample(random.Random(i)), schema).flops
                   for i in range(20))
    bound = flops[len(flops) // 2]
    strategy = Constraints(_make(job, candidates=4, finetune="none", finetune_examples=0),
                           max_flops=bound, schema=schema)
    proposals = _drain(strategy)
    scored = strategy.inner.candidates_scored
    assert scored and all(c["flops"] <= bound for c in scored)
    assert proposals and all(space.materialize(p.arch, schema).flops <= bound
                             for p in proposals)


def test_diverging_supernet_is_recorded_and_proposes_nothing():
    job = EvalJob("dlrm", {"spec": "synthetic", "rows": 3000, "seed": 0},
                  {"examples": 1024, "batch_size": 256, "lr": 1e12}, seed=0)
    strategy = _make(job, supernet_lr=1e12)
    assert strategy.ask() is None
    stage = strategy.summary()["stages"][0]
    assert stage["status"] == "failed" and "diverged" in stage["reason"]
    assert strategy.pending_cost == stage["examples"]


def test_same_seed_same_proposals(run, job):
    _, proposals = run
    again = _drain(_make(job))
    assert [p.arch.arch_id for p in again] == [p.arch.arch_id for p in proposals]
    assert [dict(p.meta) for p in again] == [dict(p.meta) for p in proposals]


def test_state_round_trip_mid_retrain(job):
    strategy = _make(job, candidates=3, top_k=3, finetune="none", finetune_examples=0)
    first = strategy.ask()
    assert first.meta["cost_examples"] == 2048  # no fine-tuning
    state = json.loads(json.dumps(strategy.state_dict()))
    rest = _drain(strategy)
    resumed = make_strategy("oneshot", job.evaluator().space, NE, seed=0,
                            **{**OPTIONS, "candidates": 3, "top_k": 3, "finetune": "none",
                               "finetune_examples": 0})
    resumed.load_state_dict(state)  # no attach needed past stage 2
    again = _drain(resumed)
    assert [(p.arch.arch_id, p.trial_id, dict(p.meta)) for p in again] == \
        [(p.arch.arch_id, p.trial_id, dict(p.meta)) for p in rest]
    assert rest  # the queue held more than the first proposal


def test_multi_objective_takes_the_pareto_front_first(run, job):
    strategy, _ = run
    objs = (Objective.named("ne"), Objective.named("flops"))
    other = OneShot(job.evaluator().space, objs, seed=0, top_k=3)
    other.candidates_scored = strategy.candidates_scored
    queue = other._top_k()
    front = [c for c in strategy.candidates_scored
             if not any(d["ne"] <= c["ne"] and d["flops"] <= c["flops"]
                        and (d["ne"], d["flops"]) != (c["ne"], c["flops"])
                        for d in strategy.candidates_scored)]
    ids = {c["arch_id"] for c in front}
    head = queue[:min(len(ids), 3)]
    assert {e["arch_id"] for e in head} <= ids
    assert [e["ne"] for e in head] == sorted(e["ne"] for e in head)


def test_ask_without_attach_raises(job):
    strategy = make_strategy("oneshot", job.evaluator().space, NE, seed=0, **OPTIONS)
    with pytest.raises(ConfigError, match=r"attach\(job\)"):
        strategy.ask()
    json.dumps(strategy.state_dict())


@pytest.mark.parametrize(("option", "value"), [
    ("supernet_examples", 0), ("supernet_examples", "many"), ("candidates", 0),
    ("top_k", 0), ("finetune", "most"), ("finetune_examples", -1), ("sampler", "nope"),
    ("warmup_steps", -1), ("supernet_lr", 0.0), ("inner", "nope"), ("inner", "oneshot"),
    ("finetune_lr", 0.0), ("finetune_lr", math.inf), ("parallel", 0), ("workers", 0),
])
def test_bad_options_name_the_option(job, option, value):
    with pytest.raises(ConfigError, match=rf"^strategies\[\]\.{option}:"):
        make_strategy("oneshot", job.evaluator().space, NE, seed=0, **{option: value})


def test_bad_nested_options_name_the_field(job):
    space = job.evaluator().space
    with pytest.raises(ConfigError, match=r"strategies\[\]\.inner_options\.bogus"):
        make_strategy("oneshot", space, NE, inner_options={"bogus": 1})
    with pytest.raises(ConfigError, match=r"strategies\[\]\.sampler_options"):
        make_strategy("oneshot", space, NE, sampler_options={"bogus": 1})
    with pytest.raises(ConfigError, match=r"strategies\[\]\.finetune_examples"):
        make_strategy("oneshot", space, NE, finetune="whole", finetune_examples=0)
    with pytest.raises(ConfigError, match=r"strategies\[\]\.supernet_train\.execution"):
        make_strategy("oneshot", space, NE, supernet_train={"execution": "dense"})
    with pytest.raises(ConfigError, match=r"strategies\[\]\.supernet_train\.lr"):
        make_strategy("oneshot", space, NE, supernet_train={"lr": 1.0})
    with pytest.raises(ConfigError, match=r"strategies\[\]\.supernet_train\.compile"):
        make_strategy("oneshot", space, NE, supernet_train={"compile": True})


def test_finetuning_that_continues_the_supernet_optimizer_runs(job):
    strategy = _make(job, candidates=2, finetune_continue=True)
    assert _drain(strategy) and strategy._sums is None
    with pytest.raises(ConfigError, match=r"strategies\[\]\.finetune_continue"):
        _make(job, finetune_continue="yes")


@pytest.mark.parametrize("execution", ["masked", "segmented"])
def test_fixed_shape_supernet_training_runs_the_same_stages(job, execution):
    strategy = _make(job, candidates=3, finetune="none", finetune_examples=0,
                     supernet_train={"execution": execution})
    proposals = _drain(strategy)
    assert proposals and strategy.summary()["stages"][0]["status"] == "ok"


def test_finetune_last_trains_only_the_head_and_last_block(job):
    from ranknas.supernet import Supernet

    ev = job.evaluator()
    strategy = make_strategy("oneshot", ev.space, NE, seed=0, **OPTIONS)
    supernet = Supernet(ev.space, ev.data.schema, 0)
    arch = ev.space.sample(strategy.rng)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    reference = supernet.extract(arch).state_dict()
    captured = {}
    original = supernet.extract

    def extract(a):
        captured["model"] = original(a)
        return captured["model"]

    supernet.extract = extract
    with CandidateScorer(supernet, 0, job, "last", {"finetune_examples": 256}) as scorer:
        (result,) = scorer.score([arch])
    assert result.ok and result.examples == 256 and math.isfinite(result.metrics["ne"])
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())
    last = len(captured["model"].ops) - 1
    changed = {k for k, v in captured["model"].state_dict().items()
               if not torch.equal(v, reference[k])}
    assert any(k.startswith("head.") for k in changed)
    assert "embedding.table.weight" not in changed
    assert all(k.startswith(("head.", f"ops.{last}.", f"ops.{last - 1}.")) for k in changed)


def test_finetune_head_trains_only_the_logit_head(job):
    from ranknas.supernet import Supernet
    from ranknas.supernet.scoring import score_on_supernet

    ev = job.evaluator()
    supernet = Supernet(ev.space, ev.data.schema, 0)
    arch = ev.space.sample(random.Random(3))
    reference = supernet.extract(arch).state_dict()
    captured = {}
    original = supernet.extract
    supernet.extract = lambda a: captured.setdefault("model", original(a))
    result = score_on_supernet(supernet, ev.space, arch, ev.data, ev.train_config,
                               finetune="head", finetune_examples=256, finetune_lr=0.01)
    assert result.ok and result.examples == 256
    changed = {k for k, v in captured["model"].state_dict().items()
               if not torch.equal(v, reference[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    with pytest.raises(ConfigError, match="finetune_lr"):
        score_on_supernet(supernet, ev.space, arch, ev.data, ev.train_config,
                          finetune="head", finetune_examples=256, finetune_lr=-1.0)


def test_batched_scoring_does_not_depend_on_the_worker_count(job):
    """Batches of 3 scored in this process and in 2 spawned ones give the same candidates,
    scores and retrain queue, also when fine-tuning continues the supernet's Adagrad."""
    def search(workers):
        strategy = _make(job, candidates=5, parallel=3, workers=workers,
                         finetune_continue=True)
        proposals = _drain(strategy)
        return ([(c["arch_id"], c["ne"]) for c in strategy.candidates_scored],
                [p.arch.arch_id for p in proposals])

    here = search(1)
    assert len(here[0]) == 5 and here == search(2)
