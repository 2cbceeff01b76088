"""Standalone NEs that :mod:`ranknas.reports.rankcorr` need not train again.

Standalone training is most of a rank-correlation run's cost, so its results are kept twice:

- :func:`reused_rows` reads them from an earlier ``rankcorr.json`` (``--standalone-from``), to
  score other supernet settings against the same reference;
- :class:`StandaloneJournal` appends each training to ``OUT/standalone.jsonl`` as it finishes,
  so a run that is killed (a time limit, a lost machine) resumes where it stopped.

Both are keyed by :func:`fingerprint_of`: results made with another space, data, training,
seed, sample size or budget are never mixed in. Supernet scores are journaled the same way
(:class:`SupernetJournal`, ``OUT/supernet.jsonl``), keyed by that fingerprint and every
supernet-side option (:func:`replicate_key`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ranknas.errors import ConfigError

__all__ = ["StandaloneJournal", "SupernetJournal", "fingerprint_of", "replicate_key",
           "reused_rows"]


def fingerprint_of(config: Any, seed: int, archs: int, standalone_examples: int | None) -> str:
    """What the standalone NEs depend on: space, data, training, seed, sample size, budget."""
    key = {"space": config.space, "data": config.data, "train": asdict(config.train_config()),
           "seed": seed, "archs": archs, "standalone_examples": standalone_examples}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def replicate_key(fingerprint: str, **options: Any) -> str:
    """What one supernet replicate's scores depend on: the standalone fingerprint (space,
    data, training, seed, sample) and the supernet-side ``options`` (seeds, sampler, budgets,
    fine-tuning)."""
    key = {"standalone": fingerprint, **options}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read(path: Path, key: str, field: str) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` whose ``field`` is ``key``; a torn last line (the process
    was killed mid-write) is skipped."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get(field) == key:
            found.append(entry)
    return found


def _append(path: Path, entry: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


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
        NaN for a failed training)."""
        found = _read(self.path, self.fingerprint, "fingerprint")
        for entry in found:
            entry["ne"] = math.nan if entry["ne"] is None else float(entry["ne"])
        return found

    def append(self, arch_id: str, seed_index: int, ne: float, result: Any) -> dict[str, Any]:
        """Record one training (an EvalResult); returns the row fields it sets."""
        row = {"flops": float(result.metrics["flops"]), "params": result.metrics["params"],
               "standalone_examples": result.examples,
               "standalone_status": result.status.value}
        _append(self.path, {"fingerprint": self.fingerprint, "arch_id": arch_id,
                            "seed_index": seed_index, "ne": ne if math.isfinite(ne) else None,
                            "row": row, "seconds": result.seconds})
        return row


class SupernetJournal:
    """``supernet.jsonl``: one replicate's trained-supernet summary and each architecture's
    scores, appended as they finish. The trained weights wait beside it in
    :attr:`weights` until every architecture is scored.

    Args:
        out: The run's output folder.
        key: :func:`replicate_key` of the replicate; lines with another are ignored.
    """

    def __init__(self, out: Path, key: str) -> None:
        self.path, self.key = out / "supernet.jsonl", key
        self.weights = out / f"supernet-{key}.pt"

    def trained(self) -> dict[str, Any] | None:
        """The training summary journaled for this replicate, if any."""
        found = [e["trained"] for e in _read(self.path, self.key, "key") if "trained" in e]
        return found[-1] if found else None

    def scores(self) -> dict[str, dict[str, float]]:
        """Architecture id -> its journaled ``{variant: NE}`` (NaN for a failed score)."""
        return {e["arch_id"]: {k: math.nan if v is None else float(v)
                               for k, v in e["scores"].items()}
                for e in _read(self.path, self.key, "key") if "scores" in e}

    def add_trained(self, trained: dict[str, Any]) -> None:
        _append(self.path, {"key": self.key, "trained": trained})

    def add_scores(self, arch_id: str, scores: dict[str, float]) -> None:
        _append(self.path, {"key": self.key, "arch_id": arch_id, "scores": {
            k: v if math.isfinite(v) else None for k, v in scores.items()}})
