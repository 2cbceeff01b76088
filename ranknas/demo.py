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
    # Fields capped at 200 ids so that embeddings learn within a demo-sized budget.
    "data": {"spec": "synthetic", "rows": 60_000, "seed": 0,
             "options": {"cardinalities": [min(c, 200) for c in (
                 1460, 583, 10131, 2202, 305, 24, 12517, 633, 3, 9327, 5683, 8351, 3194, 27,
                 14992, 5461, 10, 5652, 2173, 4, 7046, 18, 15, 20000, 105, 142)]}},
    "objectives": [{"name": "ne"}, {"name": "flops"}],
    "baseline": "dlrm-default",
    "strategies": [
        {"name": "random"},
        {"name": "evolution", "population": 6, "sample_size": 3},
        {"name": "optuna", "sampler": "NSGAIISampler", "sampler_options": {"population_size": 6}},
    ],
    "budget": {"trials": 12},
    "constraints": {"max_flops": 1_500_000},
    "train": {"examples": 40_000, "batch_size": 256, "lr": 0.02},
    "seed": 0,
}
EXPORT_EXAMPLES = 40_000


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
