"""Search quality: best NE and hypervolume per strategy at equal budgets, over several seeds.

    python benchmarks/search_quality.py --seeds 0 1 2 --out runs/bench-quality

Each seed runs the demo study (NASRec-Small, NE vs FLOPs, random / evolution / NSGA-II with
the same trial budget) with that seed for strategies, data and model initialisation. The
hypervolume uses one fixed reference point for every run: NE 1.0 (the constant predictor) and
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=None, help="override the trial budget")
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
            stats = rows.setdefault(run, {"best_ne": [], "hv": []})
            stats["best_ne"].append(best)
            stats["hv"].append(hv / 1e6)  # NE x MFLOPs
    print("| strategy | seeds | best NE (mean ± 95% CI) | hypervolume NE×MFLOPs (mean ± 95% CI) |")
    print("|---|---|---|---|")
    for run, stats in rows.items():
        ne, ne_ci = mean_ci(stats["best_ne"])
        hv, hv_ci = mean_ci(stats["hv"])
        print(f"| {run} | {len(stats['hv'])} | {ne:.4f} ± {ne_ci:.4f} | {hv:.4f} ± {hv_ci:.4f} |")
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
