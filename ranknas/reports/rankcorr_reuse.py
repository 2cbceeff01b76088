"""Standalone NEs that :mod:`ranknas.reports.rankcorr` need not train again.

Standalone training is most of a rank-correlation run's cost, so its results are kept twice:

- :func:`reused_rows` reads them from an earlier ``rankcorr.json`` (``--standalone-from``), to
  score other supernet settings against the same reference;
- :class:`StandaloneJournal` appends each training to ``OUT/standalone.jsonl`` as it finishes,
  so a run that is killed (a time limit, a lost machine) resumes where it stopped.

Both are keyed by :func:`fingerprint_of`: results made with another space, data, training,
seed, sample size or budget are never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ranknas.errors import ConfigError

__all__ = ["StandaloneJournal", "fingerprint_of", "reused_rows"]


def fingerprint_of(config: Any, seed: int, archs: int, standalone_examples: int | None) -> str:
    """What the standalone NEs depend on: space, data, training, seed, sample size, budget."""
    key = {"space": config.space, "data": config.data, "train": asdict(config.train_config()),
           "seed": seed, "archs": archs, "standalone_examples": standalone_examples}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reused_rows(path: str | Path, fingerprint: str, sample: list[Any]) -> list[dict[str, Any]]:
    """The standalone rows of an earlier ``rankcorr.json`` made with the same fingerprint."""
    where = "standalone_from"
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(where, f"cannot read {path}: {err}") from None
    if doc.get("options", {}).get("standalone_fingerprint") != fingerprint:
        raise ConfigError(where, f"{path} was made with another space, data, training, seed, "
                          "architecture count or standalone budget; rerun without "
                          "--standalone-from, or with the options it was made with")
    keep = ("arch_id", "arch", "flops", "params", "standalone_examples", "standalone_status")
    rows = []
    for row in doc["rows"]:
        nes = row.get("standalone_nes", [row["standalone_ne"]])
        rows.append({**{k: row[k] for k in keep},
                     "standalone_nes": [math.nan if v is None else v for v in nes]})
    if [r["arch_id"] for r in rows] != [a.arch_id for a in sample]:
        raise ConfigError(where, f"{path} holds other architectures than this sample")
    return rows


class StandaloneJournal:
    """``standalone.jsonl``: one line per finished standalone training, appended at once.

    Args:
        path: The journal file (created on the first append).
        fingerprint: :func:`fingerprint_of` of this run; lines with another are ignored.
    """

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint

    def entries(self) -> list[dict[str, Any]]:
        """This fingerprint's lines: ``{"arch_id", "seed_index", "ne", "row"}`` each (``ne``
        NaN for a failed training). A torn last line (the process was killed mid-write) is
        skipped."""
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("fingerprint") == self.fingerprint:
                entry["ne"] = math.nan if entry["ne"] is None else float(entry["ne"])
                found.append(entry)
        return found

    def append(self, arch_id: str, seed_index: int, ne: float, result: Any) -> dict[str, Any]:
        """Record one training (an EvalResult); returns the row fields it sets."""
        row = {"flops": float(result.metrics["flops"]), "params": result.metrics["params"],
               "standalone_examples": result.examples,
               "standalone_status": result.status.value}
        entry = {"fingerprint": self.fingerprint, "arch_id": arch_id, "seed_index": seed_index,
                 "ne": ne if math.isfinite(ne) else None, "row": row,
                 "seconds": result.seconds}
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        return row
