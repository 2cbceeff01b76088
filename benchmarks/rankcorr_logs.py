"""Kendall tau of supernet scores read from ``ranknas rank-corr`` logs, runs cut short included.

    python benchmarks/rankcorr_logs.py benchmarks/results/rankcorr_ft_budget/*.log \
        --standalone benchmarks/results/rankcorr_gpu_standalone.jsonl

A rank-corr run writes its statistics only at the end, but logs one line per scored
architecture (``[i/50] supernet 0 ARCH_ID: NE inherited / fine-tuned ...``). This script takes
the last NE of each line (the deepest fine-tuning the run scored), keeps the architectures
that every log scored, and reports each log's Kendall tau against the mean standalone NE of
the journal's seeds, with rank-corr's bootstrap 95% CI, and the median scored NE.
As a reference on the same architectures it adds one standalone training (seed 0) against the
mean of the other seeds: the tau a supernet score would need to replace a full training.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from ranknas.reports.rank_statistics import rank_statistics

LINE = re.compile(r"\[\d+/\d+\] supernet \d+ (\w+): NE (.+)$")


def scores(log: Path) -> dict[str, float]:
    """Architecture id -> its last logged NE (nan lines are dropped)."""
    out = {}
    for line in log.read_text().splitlines():
        match = LINE.match(line)
        if match:
            value = float(match[2].split(" / ")[-1])
            if np.isfinite(value):
                out[match[1]] = value
    return out


def tau(x: np.ndarray, y: np.ndarray, seed: int) -> str:
    """Kendall tau with rank-corr's own bootstrap 95% CI."""
    stat = rank_statistics(y, x, seed=seed)["kendall_tau"]
    return f"{stat['value']:.2f} [{stat['lo']:.2f}, {stat['hi']:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--standalone", type=Path, required=True,
                        help="rank-corr standalone journal (JSON lines: arch_id, seed_index, ne)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args()
    nes: dict[str, dict[int, float]] = {}
    for line in args.standalone.read_text().splitlines():
        row = json.loads(line)
        nes.setdefault(row["arch_id"], {})[row["seed_index"]] = row["ne"]
    seeds = max(len(v) for v in nes.values())
    full = {a: v for a, v in nes.items() if len(v) == seeds}
    runs = {log.stem: scores(log) for log in args.logs}
    common = sorted(set(full).intersection(*runs.values()))
    if len(common) < 3:
        raise SystemExit(f"only {len(common)} architectures are in every log and the journal")
    target = np.array([np.mean(list(full[a].values())) for a in common])
    print(f"{len(common)} architectures scored by every log; target: mean NE of {seeds} "
          "standalone seeds\n")
    print("| run | Kendall tau [95% CI] | median NE |\n|---|---|---|")
    for name, run in runs.items():
        x = np.array([run[a] for a in common])
        print(f"| {name} | {tau(x, target, args.seed)} | {np.median(x):.3f} |")
    if seeds >= 3:
        one = np.array([full[a][0] for a in common])
        rest = np.array([np.mean([v for s, v in full[a].items() if s != 0]) for a in common])
        print(f"| standalone seed 0 vs the other seeds' mean | {tau(one, rest, args.seed)} "
              f"| {np.median(one):.3f} |")


if __name__ == "__main__":
    main()
