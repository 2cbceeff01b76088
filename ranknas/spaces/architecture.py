"""Architecture: a frozen value naming one model of a space by its active choices."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ranknas.errors import InvalidArchitecture


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Architecture:
    """Space name and version plus the *active* choices, sorted by name.

    Build one through :meth:`SearchSpace.canonicalize` (or ``sample``/``mutate``), which drops
    inactive choices, so that two strategies that find the same model agree on its
    :attr:`arch_id`. It holds no metrics.

    Args:
        space: Name of the space it belongs to.
        version: Version of that space's definition.
        choices: ``(name, value)`` pairs, sorted by name.
    """

    space: str
    version: str
    choices: tuple[tuple[str, Any], ...]
    _index: dict = field(default=None, init=False, repr=False, compare=False, hash=False)
    _id: str = field(default="", init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(sorted(self.choices)))
        object.__setattr__(self, "_index", dict(self.choices))

    def __getitem__(self, name: str) -> Any:
        return self._index[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._index.get(name, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._index)

    def to_json(self) -> dict:
        """``{"space", "version", "choices": {name: value}}``; tuples become lists."""
        return {"space": self.space, "version": self.version,
                "choices": {k: _jsonable(v) for k, v in self.choices}}

    def dumps(self) -> str:
        """Canonical JSON text: sorted keys, no whitespace. ``arch_id`` hashes this."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @property
    def arch_id(self) -> str:
        """First 16 hex digits of the SHA-256 of :meth:`dumps` (computed once: caches and
        the supernet's per-step plan lookup ask for it often)."""
        if not self._id:
            object.__setattr__(self, "_id", hashlib.sha256(self.dumps().encode()).hexdigest()[:16])
        return self._id

    @classmethod
    def from_json(cls, obj: Any, where: str = "architecture") -> Architecture:
        """Rebuild from :meth:`to_json` output, structurally (lists become tuples).

        This does not check the choices against a space; use ``space.from_json`` for that.
        """
        space, version, raw = cls.parse_json(obj, where)
        return cls(space, version, tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in raw.items()))

    @staticmethod
    def parse_json(obj: Any, where: str = "architecture") -> tuple[str, str, dict[str, Any]]:
        """Check the outer shape of architecture JSON; return (space, version, raw choices)."""
        if not isinstance(obj, Mapping):
            raise InvalidArchitecture(where, f"expected an object, got {type(obj).__name__}")
        missing = [k for k in ("space", "choices") if k not in obj]
        if missing:
            raise InvalidArchitecture(where, f"missing key {missing[0]!r} "
                                             "(an architecture has space, version, choices)")
        if not isinstance(obj["choices"], Mapping):
            raise InvalidArchitecture(f"{where}.choices", "expected an object of name: value")
        return str(obj["space"]), str(obj.get("version", "")), dict(obj["choices"])
