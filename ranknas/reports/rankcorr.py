"""Rank-correlation diagnostics: does the supernet rank architectures like standalone training?

:func:`run_rank_correlation` (the ``ranknas rank-corr`` command):

1. samples ``archs`` architectures of the config's space stratified by FLOPs: it draws
   ``20 * archs`` (deduplicated, seeded), sorts them by FLOPs, splits them into ``archs``
   equal-count (quantile) bins and takes one at random from each bin;
2. trains each standalone with the config's training settings (``standalone_examples``
   overrides the per-architecture budget) under ``standalone_seeds`` seeds and records the
   mean validation NE; with two or more seeds it also reports the rank agreement of the first
   two seeds (``standalone_repeat``): the noise ceiling a supernet's τ is measured against;
   with three or more, also the first seed against the mean of the others
   (``standalone_single``): how well one full standalone training ranks, the τ a supernet
   score would need to replace it;
   (or reuses them from an earlier ``rankcorr.json`` made with the same space, data, training,
   seed, architecture count and budget: ``standalone_from``; seeds it lacks are trained);
   every finished training is journaled in ``OUT/standalone.jsonl``, so a killed run started
   again with the same ``OUT`` resumes (:mod:`~ranknas.reports.rankcorr_reuse`; supernet
   scores likewise, in ``OUT/supernet.jsonl``);
3. trains a supernet (``sampler``, NASRec's ``any-path`` by default, optionally behind a
   full-path warm-up; ``supernet_replicates`` of them with independent seeds, each
   architecture's score then being the mean, see
   :mod:`~ranknas.reports.rankcorr_supernet`) on ``supernet_examples`` and scores every
   architecture on it with
   :func:`~ranknas.supernet.scoring.score_on_supernet`: without fine-tuning (inherited
   weights, variant ``no_finetune``) and after each fine-tuning mode of ``finetune`` on
   ``finetune_examples`` (variants ``finetune_last``, ``finetune_whole``);
4. reports, for every variant, Kendall τ, Spearman ρ and the top-10% overlap between supernet
   NE and standalone NE (see :func:`rank_statistics`), writes ``OUT/rankcorr.json`` and
   ``OUT/rankcorr.png`` and logs them with the summary metrics to MLflow (experiment
   ``<config name>-rankcorr``; the local SQLite store under ``OUT`` when ``tracking.uri`` is
   null).

Lower NE is better in both rankings, so a positive τ means the supernet agrees with
standalone training.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ranknas.errors import ConfigError
from ranknas.reports.rank_statistics import STATISTICS, rank_statistics
from ranknas.reports.rankcorr_reuse import StandaloneJournal, fingerprint_of, reused_rows
from ranknas.reports.rankcorr_supernet import score_replicate

__all__ = ["STATISTICS", "rank_statistics", "run_rank_correlation", "stratified_sample"]

#: Candidates drawn per architecture asked for, before stratifying by FLOPs.
POOL_FACTOR = 20


def variants(finetune: Sequence[str]) -> list[str]:
    """Variant names: ``no_finetune`` then ``finetune_<mode>`` per fine-tuning mode."""
    return ["no_finetune", *(f"finetune_{mode}" for mode in finetune)]


def _check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"expected an integer >= {minimum}, got {value!r}")


def stratified_sample(space: Any, schema: Any, archs: int, seed: int) -> list[Any]:
    """``archs`` distinct architectures, one from each FLOPs quantile bin of a seeded pool.

    Raises:
        ConfigError: the space yields fewer than ``archs`` distinct architectures.
    """
    rng = random.Random(f"rankcorr-sample-{seed}")
    pool: dict[str, tuple[float, Any]] = {}
    for _ in range(POOL_FACTOR * archs):
        arch = space.sample(rng)
        if arch.arch_id not in pool:
            pool[arch.arch_id] = (float(space.materialize(arch, schema).flops), arch)
    if len(pool) < archs:
        raise ConfigError("archs", f"the space gave only {len(pool)} distinct architectures "
                          f"in {POOL_FACTOR * archs} draws; ask for at most that many")
    ordered = sorted(pool.values(), key=lambda item: (item[0], item[1].arch_id))
    bins = np.array_split(np.arange(len(ordered)), archs)
    return [ordered[int(rng.choice(list(b)))][1] for b in bins]


def _scatter(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k.removeprefix("supernet_ne_") for k in rows[0] if k.startswith("supernet_ne_")]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.5), sharex=True,
                             squeeze=False)
    for ax, variant in zip(axes[0], names, strict=True):
        xs = [r["standalone_ne"] for r in rows]
        ys = [r[f"supernet_ne_{variant}"] for r in rows]
        ax.scatter(xs, ys, s=18, alpha=0.8)
        tau = summary.get(variant, {}).get("kendall_tau", {}).get("value", math.nan)
        ax.set_title(f"{variant.replace('_', ' ')}: Kendall τ = {tau:.3f}")
        ax.set_xlabel("standalone NE")
        ax.set_ylabel("supernet NE")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _log_mlflow(tracker: Any, config: Any, options: dict[str, Any],
                rows: list[dict[str, Any]], summary: dict[str, Any],
                files: Sequence[Path]) -> str | None:
    """One run in experiment ``<name>-rankcorr``: params, summary metrics, per-arch steps.
    Returns its id (None with tracking disabled)."""
    if not config.tracking.get("enabled", True):
        return None
    tracker.start_study({"config": config.to_json(), "rankcorr": options}, resume=False,
                        backfill=False)
    run_id = tracker.parent_run_id
    stats = [name for name, value in summary.items()
             if isinstance(value, dict) and "kendall_tau" in value]
    series: dict[str, list[tuple[int, float]]] = {
        f"{variant}.{name}{suffix}": [(0, stat[key])]
        for variant in stats for name, stat in summary[variant].items()
        for key, suffix in (("value", ""), ("lo", ".lo"), ("hi", ".hi"))}
    for key in ("standalone_ne", *(k for k in rows[0] if k.startswith("supernet_ne_"))):
        series[key] = [(i, row[key]) for i, row in enumerate(rows)]  # step = architecture
    series["archs_used"] = [(0, float(summary["archs_used"]))]
    tracker.log_series(series)  # non-finite values are skipped
    tracker.client.set_tag(run_id, "ranknas.role", "rankcorr")
    for path in files:
        tracker.log_artifacts(path)
    tracker.end_study("FINISHED")
    return run_id


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def run_rank_correlation(config: Any, out: str | Path, *, archs: int = 50,
                         standalone_examples: int | None = None,
                         supernet_examples: int = 200_000,
                         finetune: str | Sequence[str] = "last",
                         finetune_examples: int = 20_000, finetune_lr: float | None = None,
                         finetune_continue: bool = False,
                         sampler: str = "any-path",
                         warmup_steps: int = 0, supernet_lr: float | None = None,
                         standalone_from: str | Path | None = None, standalone_seeds: int = 1,
                         bootstrap: int = 1000, workers: int = 1,
                         seed: int | None = None, supernet_seed: int | None = None,
                         supernet_replicates: int = 1,
                         supernet_train: Mapping[str, Any] | None = None,
                         progress: bool = True) -> dict[str, Any]:
    """Rank correlation of supernet scores (with and without fine-tuning) vs standalone NE.

    Args:
        config: An :class:`~ranknas.config.ExperimentConfig` (space, data, train, seed,
            tracking, name are used).
        out: Output folder for ``rankcorr.json``, ``rankcorr.png`` and the local MLflow store.
        archs: Architectures to sample (>= 2), stratified by FLOPs.
        standalone_examples: Standalone training examples per architecture; None: the
            config's per-trial budget.
        supernet_examples: Supernet training examples.
        finetune: Fine-tuning mode(s) scored besides no fine-tuning: ``head``, ``last``
            and/or ``whole`` (see :data:`~ranknas.supernet.scoring.FINETUNE_MODES`).
        finetune_examples: Fine-tuning examples per architecture and mode.
        finetune_lr: Fine-tuning learning rate; None: the config's lr.
        finetune_continue: Fine-tune from the supernet's Adagrad accumulators (sliced) rather
            than empty ones.
        sampler: Path sampler of supernet training (``ranknas.supernet.SAMPLERS``).
        warmup_steps: When > 0, a full-path warm-up over this many steps before ``sampler``.
        supernet_lr: Learning rate of supernet training; None: the config's lr.
        standalone_from: An earlier ``rankcorr.json`` whose standalone NEs to reuse; it must
            have been made with the same space, data, training, seed, ``archs`` and
            ``standalone_examples``.
        standalone_seeds: Seeds (``seed``, ``seed + 1``, ...) each architecture is trained
            with standalone; its reference NE is their mean.
        bootstrap: Bootstrap resamples of the confidence intervals (0: none).
        workers: Processes that run the standalone trainings and the supernet scoring
            (:mod:`~ranknas.execution.pool`); the results do not depend on it.
        seed: Seeds sampling, supernet, fine-tuning and bootstrap; None: the config's seed.
            Standalone training uses ``seed``, ``seed + 1``, ...; the supernet and
            fine-tuning use seeds derived from it, so they share no batch order with it.
        supernet_seed: Derive the supernet's, its sampler's and fine-tuning's seeds from this
            instead of ``seed``: another replicate of the supernet against the same sample
            and standalone NEs (so ``standalone_from`` still applies).
        supernet_replicates: Supernets trained and scored with seeds derived from
            ``supernet_seed``, ``supernet_seed + 1``, ...; an architecture's score is the mean
            over them (``supernet_nes_<variant>`` keeps each), and with two or more the first
            two replicates' agreement is reported (``<variant>_repeat``).
        supernet_train: How the supernet trains: ``SupernetTrainConfig`` fields among
            :data:`~ranknas.supernet.train_config.EXECUTION_OPTIONS`, e.g.
            ``{"execution": "segmented", "cuda_graph": True, "precision": "tf32"}`` on a GPU.
        progress: Print per-architecture progress to stderr and a summary table to stdout.

    Returns:
        The ``rankcorr.json`` document: ``{"options", "rows", "summary", "mlflow_run_id"}``;
        ``summary[variant][statistic] = {"value", "lo", "hi"}`` for every variant of
        :func:`variants`, plus ``archs_used``. The file stores non-finite numbers (a failed
        architecture's NE, an undefined CI) as null.

    Raises:
        ConfigError: a bad option, an unusable ``standalone_from``, or fewer than 2
            architectures with finite NEs.
    """
    from ranknas.execution import pool
    from ranknas.execution.base import EvalJob
    from ranknas.execution.standalone import StandaloneEvaluator
    from ranknas.reports.tracking import make_tracker
    from ranknas.supernet import SupernetTrainConfig, make_sampler
    from ranknas.supernet.train_config import EXECUTION_OPTIONS

    _check_int("archs", archs, 2)
    _check_int("standalone_examples", standalone_examples, 1, optional=True)
    _check_int("supernet_examples", supernet_examples, 1)
    _check_int("finetune_examples", finetune_examples, 1)
    _check_int("warmup_steps", warmup_steps, 0)
    _check_int("standalone_seeds", standalone_seeds, 1)
    _check_int("bootstrap", bootstrap, 0)
    _check_int("workers", workers, 1)
    modes = [finetune] if isinstance(finetune, str) else list(finetune)
    if not modes or len(set(modes)) < len(modes) or set(modes) - {"head", "last", "whole"}:
        raise ConfigError("finetune", f"expected distinct modes among head, last, whole; got "
                          f"{finetune!r}")
    if supernet_lr is not None and not (isinstance(supernet_lr, float | int)
                                        and math.isfinite(supernet_lr) and supernet_lr > 0):
        raise ConfigError("supernet_lr", f"expected a finite number > 0, got {supernet_lr!r}")
    seed = config.seed if seed is None else seed
    _check_int("seed", seed, 0)
    _check_int("supernet_seed", supernet_seed, 0, optional=True)
    _check_int("supernet_replicates", supernet_replicates, 1)
    base = seed if supernet_seed is None else supernet_seed  # of the supernet-side seeds
    supernet_train = dict(supernet_train or {})
    unknown = sorted(set(supernet_train) - set(EXECUTION_OPTIONS))
    if unknown:
        raise ConfigError(f"supernet_train.{unknown[0]}", "unknown option; allowed: "
                          f"{', '.join(EXECUTION_OPTIONS)}")
    sampler_name, sampler_options = sampler, {}
    if warmup_steps:
        sampler_name, sampler_options = "warmup", {"warmup_steps": warmup_steps, "inner": sampler}
    fingerprint = fingerprint_of(config, seed, archs, standalone_examples)
    options = {"archs": archs, "standalone_examples": standalone_examples,
               "supernet_examples": supernet_examples, "finetune": modes,
               "finetune_examples": finetune_examples, "finetune_lr": finetune_lr,
               "finetune_continue": finetune_continue,
               "bootstrap": bootstrap, "seed": seed,
               "sampler": sampler, "warmup_steps": warmup_steps, "supernet_lr": supernet_lr,
               "standalone_seeds": standalone_seeds, "pool_factor": POOL_FACTOR,
               "workers": workers, "supernet_seed": supernet_seed,
               "supernet_replicates": supernet_replicates,
               "supernet_train": supernet_train,
               "standalone_fingerprint": fingerprint}
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) \
        if progress else (lambda m: None)

    train = asdict(config.train_config())
    train["seed"] = seed
    job = EvalJob(config.space, dict(config.data), train, seed)
    ev = job.evaluator()
    cached = [pool.seed_cache(job, ev)]  # released at the end: data and supernets are large
    space, data, cfg = ev.space, ev.data, ev.train_config
    sample = stratified_sample(space, data.schema, archs, seed)
    make_sampler(sampler_name, space, seed, schema=data.schema, **sampler_options)  # fail early
    SupernetTrainConfig.following(cfg, supernet_examples, seed, lr=supernet_lr,
                                  **supernet_train)  # likewise, before hours of training
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tracker = make_tracker(config, out, f"{config.name}-rankcorr")
    tracker.check()  # a missing MLflow or server fails now, not after the run
    rows: list[dict[str, Any]] = [{"arch_id": a.arch_id, "arch": a.to_json(),
                                   "standalone_nes": []} for a in sample]
    if standalone_from is not None:
        rows = reused_rows(standalone_from, fingerprint, sample)
        say(f"standalone NEs of {len(rows)} architectures reused from {standalone_from}")
    # nes[i][r]: architecture i's NE under seed + r, from standalone_from, then from this
    # folder's journal (a killed run resumes), then trained; each new one is journaled.
    nes = [dict(enumerate(row.pop("standalone_nes"))) for row in rows]
    journal = StandaloneJournal(out / "standalone.jsonl", fingerprint)
    for entry in journal.entries():
        i = next((i for i, row in enumerate(rows) if row["arch_id"] == entry["arch_id"]), None)
        if i is not None and entry["seed_index"] < standalone_seeds:
            nes[i][entry["seed_index"]] = entry["ne"]
            rows[i].update(entry["row"])
    todo = [(r, i) for r in range(standalone_seeds) for i in range(len(rows)) if r not in nes[i]]
    if len(todo) < standalone_seeds * len(rows):
        say(f"standalone: {standalone_seeds * len(rows) - len(todo)} trainings reused, "
            f"{len(todo)} to run")
    done = 0

    def standalone_done(k: int, res: Any) -> None:
        nonlocal done
        r, i = todo[k]
        done += 1
        nes[i][r] = ne = float(res.metrics.get("ne", math.nan)) if res.ok else math.nan
        rows[i].update(journal.append(rows[i]["arch_id"], r, ne, res))
        say(f"[{done}/{len(todo)}] standalone seed {seed + r} {rows[i]['arch_id']}: "
            f"NE {ne:.4f} ({res.seconds:.1f} s)")

    replicas = {r: EvalJob(job.space, job.data, {**train, "seed": seed + r}, seed + r)
                for r in range(1, standalone_seeds)}
    if workers == 1:  # in this process, seed r shares seed 0's space and data
        cached += [pool.seed_cache(replicas[r], StandaloneEvaluator(
            space, data, replace(cfg, seed=seed + r), seed=seed + r, threads=ev.threads))
            for r in replicas]
    pool.run_tasks(pool.standalone_task,
                   [(replicas.get(r, job), sample[i], standalone_examples) for r, i in todo],
                   workers, standalone_done)
    for row, by_seed in zip(rows, nes, strict=True):
        row["standalone_nes"] = [by_seed[r] for r in range(standalone_seeds)]
        row["standalone_ne"] = sum(row["standalone_nes"]) / standalone_seeds  # nan if one failed

    names = variants(modes)
    trained_runs = []
    for r in range(supernet_replicates):  # replicate r: seeds derived from base + r
        scores, trained = score_replicate(
            job, ev, sample, base + r, sampler=(sampler_name, sampler_options),
            supernet_examples=supernet_examples, supernet_lr=supernet_lr, modes=modes,
            score_options={"finetune_examples": finetune_examples, "finetune_lr": finetune_lr},
            finetune_continue=finetune_continue, workers=workers, out=out, say=say,
            supernet_train=supernet_train, fingerprint=fingerprint)
        trained_runs.append(trained)
        for row, by_variant in zip(rows, scores, strict=True):
            for variant in names:
                row.setdefault(f"supernet_nes_{variant}", []).append(by_variant[variant])
    for row in rows:  # the score of a replicate ensemble: the mean NE (nan if one failed)
        for variant in names:
            row[f"supernet_ne_{variant}"] = sum(row[f"supernet_nes_{variant}"]) / \
                supernet_replicates
    pool.release(*cached)

    usable = [r for r in rows if all(math.isfinite(r[k]) for k in
                                     ("standalone_ne", *(f"supernet_ne_{v}" for v in names)))]
    if len(usable) < 2:
        raise ConfigError("archs", f"only {len(usable)} architectures have finite NEs on "
                          "every side; raise the training budgets or lower the lr")
    standalone = [r["standalone_ne"] for r in usable]
    summary: dict[str, Any] = {"archs_used": len(usable), "supernet": [
        {k: t[k] for k in ("examples", "steps", "loss", "seconds")} for t in trained_runs]}
    if standalone_seeds > 1:  # how well standalone training agrees with itself
        summary["standalone_repeat"] = rank_statistics(
            [r["standalone_nes"][0] for r in usable], [r["standalone_nes"][1] for r in usable],
            bootstrap=bootstrap, seed=seed)
    if standalone_seeds > 2:  # one full training as the scorer, against the others' mean
        summary["standalone_single"] = rank_statistics(
            [sum(r["standalone_nes"][1:]) / (standalone_seeds - 1) for r in usable],
            [r["standalone_nes"][0] for r in usable], bootstrap=bootstrap, seed=seed)
    for variant in names:
        summary[variant] = rank_statistics(standalone,
                                           [r[f"supernet_ne_{variant}"] for r in usable],
                                           bootstrap=bootstrap, seed=seed)
        if supernet_replicates > 1:  # how well the scorer agrees with itself
            summary[f"{variant}_repeat"] = rank_statistics(
                [r[f"supernet_nes_{variant}"][0] for r in usable],
                [r[f"supernet_nes_{variant}"][1] for r in usable], bootstrap=bootstrap,
                seed=seed)
    doc: dict[str, Any] = {"options": options, "rows": rows, "summary": summary}
    png, path = out / "rankcorr.png", out / "rankcorr.json"
    _scatter(rows, summary, png)
    path.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    doc["mlflow_run_id"] = _log_mlflow(tracker, config, options, rows, summary, (path, png))
    path.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    if progress:
        print(format_table(summary))
    return doc


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a short text table: statistic x variant, value [95% CI]."""
    names = [k for k in summary if isinstance(summary[k], dict) and "kendall_tau" in summary[k]]
    lines = [f"{'statistic':<15}" + "".join(f"{v:>26}" for v in names)]
    for name in STATISTICS:
        cells = []
        for variant in names:
            s = summary[variant][name]
            cells.append(f"{s['value']:>7.3f} [{s['lo']:>6.3f}, {s['hi']:>6.3f}]")
        lines.append(f"{name:<15}" + "".join(f"{c:>26}" for c in cells))
    lines.append(f"architectures used: {summary['archs_used']}")
    return "\n".join(lines)
