"""The trial journal: one JSON line per finished trial, the source of truth of a search.

Resume, reports, MLflow back-fill and export all read it. Each line is flushed and fsynced as
it is written, so a search killed at any moment loses at most the trial in flight; a torn last
line (the process died mid-write) is ignored on read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranknas.evaluator.results import EvalResult


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial.

    Args:
        run: Label of the strategy run, e.g. ``evolution`` (unique within a study).
        strategy: Strategy registry name.
        trial_id: Proposal number within the run.
        arch: Architecture JSON (``Architecture.to_json()``).
        result: The evaluation result.
        examples_total: The run's cumulative examples after this trial (budget accounting).
        seconds_total: The run's cumulative evaluation seconds after this trial.
        meta: Proposal notes.
        state: The strategy's ``state_dict()`` right after this trial was told, so that a
            resumed run continues exactly where the journal ends (one atomic line).
    """

    run: str
    strategy: str
    trial_id: int
    arch: dict[str, Any]
    result: EvalResult
    examples_total: int
    seconds_total: float
    meta: dict[str, Any]
    state: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "strategy": self.strategy, "trial_id": self.trial_id,
                "arch": self.arch, "result": self.result.to_json(),
                "examples_total": self.examples_total, "seconds_total": self.seconds_total,
                "meta": self.meta, "state": self.state}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrialRecord:
        return cls(obj["run"], obj["strategy"], int(obj["trial_id"]), obj["arch"],
                   EvalResult.from_json(obj["result"]), int(obj["examples_total"]),
                   float(obj["seconds_total"]), dict(obj.get("meta", {})),
                   obj.get("state"))


class Journal:
    """Append-only JSONL file of :class:`TrialRecord`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: TrialRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __iter__(self) -> Iterator[TrialRecord]:
        if not self.path.exists():
            return
        with self.path.open() as f:
            for line in f:
                if not line.endswith("\n"):
                    return  # torn write of a killed process: that trial never finished
                yield TrialRecord.from_json(json.loads(line))

    def records(self, run: str | None = None) -> list[TrialRecord]:
        return [r for r in self if run is None or r.run == run]

    def repair(self) -> None:
        """Drop a torn last line so that appends start on a fresh line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])
