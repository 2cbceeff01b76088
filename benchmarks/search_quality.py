"""Search quality: best NE and hypervolume per strategy at equal budgets, over several seeds.

    python benchmarks/search_quality.py --seeds 0 1 2 --out runs/bench-quality
    python benchmarks/search_quality.py --preset oneshot --seeds 0 1 2 --out runs/bench-oneshot
    python benchmarks/search_quality.py --preset oneshot --budget-examples 960000 \
        --candidates 30 --finetune-examples 10000 --warmup-steps 400 --out runs/bench-oneshot2

Each seed runs the demo study (NASRec-Small, NE vs FLOPs) with that seed for strategies, data
and model initialisation. Presets:

- ``sampling``: random / regularized evolution / NSGA-II, the same trial budget each.
- ``oneshot``: regularized evolution with standalone training against one-shot (supernet
  training, evolution on fine-tuned supernet scores, top-k retrained from scratch) under the
  same *example* budget, which counts every example either one processes: standalone
  training, supernet training, fine-tuning and retraining. Both report standalone-trained NEs.

The hypervolume uses one fixed reference point for every run: NE 1.0 (the constant predictor) and
FLOPs = the study's max_flops constraint, so the figures are comparable across seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
from pathlib import Path

from ranknas.config import config_from_dict
from ranknas.demo import DEMO_CONFIG
from ranknas.execution.journal import Journal
from ranknas.reports.pareto import hypervolume
from ranknas.search import run_search


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval."""
    from scipy import stats

    if len(values) < 2:
        return values[0], math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return statistics.fmean(values), float(half)


def oneshot_study(doc: dict, examples: int, candidates: int = 60, finetune: int = 2000,
                  top_k: int = 4, warmup_steps: int = 0) -> dict:
    """The demo study as evolution vs one-shot under one budget of ``examples``.

    One-shot spends ``top_k`` retrainings at the study's per-trial budget and ``candidates``
    fine-tunings (head and last block) of ``finetune`` examples; the rest of the budget trains
    the supernet (any-path sampler, after ``warmup_steps`` of full-path warm-up).
    """
    per_trial = doc["train"]["examples"]
    evolution = next(s for s in doc["strategies"] if s["name"] == "evolution")
    supernet = examples - top_k * per_trial - candidates * finetune
    if supernet <= 0:
        raise SystemExit(f"--budget-examples {examples} is too small for one-shot's top-{top_k} "
                         f"retraining and {candidates} fine-tuned candidates")
    doc["strategies"] = [evolution, {
        "name": "oneshot", "supernet_examples": supernet, "candidates": candidates,
        "finetune": "last", "finetune_examples": finetune, "top_k": top_k,
        "warmup_steps": warmup_steps, "inner_options": {"population": 12, "sample_size": 4}}]
    doc["budget"] = {"examples": examples}
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", choices=["sampling", "oneshot"], default="sampling")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=None, help="override the trial budget")
    parser.add_argument("--budget-examples", type=int, default=480_000,
                        help="the oneshot preset's example budget per strategy")
    parser.add_argument("--candidates", type=int, default=60, help="oneshot preset")
    parser.add_argument("--finetune-examples", type=int, default=2000, help="oneshot preset")
    parser.add_argument("--top-k", type=int, default=4, help="oneshot preset")
    parser.add_argument("--warmup-steps", type=int, default=0, help="oneshot preset")
    parser.add_argument("--out", default="runs/bench-quality")
    args = parser.parse_args()
    reference = (1.0, float(DEMO_CONFIG["constraints"]["max_flops"]))
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        doc = copy.deepcopy(DEMO_CONFIG)
        doc["seed"] = seed
        doc["data"]["seed"] = seed
        doc.pop("baseline")
        if args.trials:
            doc["budget"] = {"trials": args.trials}
        if args.preset == "oneshot":
            doc = oneshot_study(doc, args.budget_examples, args.candidates,
                                args.finetune_examples, args.top_k, args.warmup_steps)
        out = Path(args.out) / f"seed{seed}"
        run_search(config_from_dict(doc), out, resume=(out / "config.json").exists(),
                   progress=False)
        by_run: dict[str, list] = {}
        for record in Journal(out / "trials.jsonl"):
            by_run.setdefault(record.run, []).append(record)
        for run, records in by_run.items():
            ok = [r.result.metrics for r in records if r.result.ok]
            best = min(m["ne"] for m in ok)
            hv = hypervolume([(m["ne"], m["flops"]) for m in ok], ("minimize", "minimize"),
                             reference)
            stats = rows.setdefault(run, {"best_ne": [], "hv": [], "examples": [],
                                          "trained": []})
            stats["best_ne"].append(best)
            stats["hv"].append(hv / 1e6)  # NE x MFLOPs
            stats["examples"].append(records[-1].examples_total)
            stats["trained"].append(len(ok))
    print("| strategy | seeds | examples used (mean) | standalone-trained models (mean) | "
          "best NE (mean ± 95% CI) | hypervolume NE×MFLOPs (mean ± 95% CI) |")
    print("|---|---|---|---|---|---|")
    for run, stats in rows.items():
        ne, ne_ci = mean_ci(stats["best_ne"])
        hv, hv_ci = mean_ci(stats["hv"])
        print(f"| {run} | {len(stats['hv'])} | {statistics.fmean(stats['examples']):,.0f} | "
              f"{statistics.fmean(stats['trained']):.1f} | {ne:.4f} ± {ne_ci:.4f} | "
              f"{hv:.4f} ± {hv_ci:.4f} |")
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=1))
    print(paired_table(rows))


def paired_table(rows: dict[str, dict[str, list[float]]]) -> str:
    """Per-seed differences of each strategy against the first one, mean ± 95% CI (paired:
    the same seed gives both the same data and initialisation, so seed noise cancels)."""
    names = list(rows)
    lines = [f"| paired difference vs {names[0]} | seeds | best NE | hypervolume |",
             "|---|---|---|---|"]
    base = rows[names[0]]
    for name in names[1:]:
        cells = []
        for key in ("best_ne", "hv"):
            diffs = [a - b for a, b in zip(rows[name][key], base[key], strict=False)]
            mean, ci = mean_ci(diffs)
            cells.append(f"{mean:+.4f} ± {ci:.4f}")
        n = min(len(rows[name]["hv"]), len(base["hv"]))
        lines.append(f"| {name} - {names[0]} | {n} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
