"""``ranknas demo``: the main job on the embedded synthetic data, in a few minutes on 2 cores.

Random search, regularized evolution and NSGA-II (Optuna) search NASRec-Small for NE vs FLOPs
on equal budgets; everything is logged to MLflow, the report is written and the Pareto front
exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ranknas.config import config_from_dict

DEMO_CONFIG: dict[str, Any] = {
    "name": "ranknas-demo",
    "space": "nasrec_small",
    "data": {"spec": "synthetic", "rows": 60_000, "seed": 0},
    "objectives": [{"name": "ne"}, {"name": "flops"}],
    "baseline": "dlrm-default",
    "strategies": [
        {"name": "random"},
        {"name": "evolution", "population": 6, "sample_size": 3},
        {"name": "optuna", "sampler": "NSGAIISampler", "sampler_options": {"population_size": 6}},
    ],
    "budget": {"trials": 10},
    "constraints": {"max_flops": 3_000_000},
    "train": {"examples": 30_000, "batch_size": 512, "lr": 0.05},
    "seed": 0,
}
EXPORT_EXAMPLES = 30_000


def _fresh(out: Path) -> Path:
    """``out`` if unused, else ``out-2``, ``out-3``, ...: a demo never overwrites a folder."""
    candidate, k = out, 2
    while candidate.exists() and any(candidate.iterdir()):
        candidate, k = out.with_name(f"{out.name}-{k}"), k + 1
    return candidate


def run_demo(out: Path, *, quiet: bool = False) -> tuple[Path, Path]:
    """Search, report and export; returns (search folder, export folder)."""
    from ranknas.reports.export import export_front
    from ranknas.search import run_search

    out = _fresh(out)
    config = config_from_dict(DEMO_CONFIG)
    run_search(config, out, progress=not quiet)
    export = out / "export"
    export_front(out, export, train_examples=EXPORT_EXAMPLES)
    return out, export
