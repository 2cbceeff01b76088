"""MLflow's limits on keys and values, and configs flattened into run parameters."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_PARAM", "MAX_TAG", "as_text", "clip", "flatten", "metric_key"]

MAX_KEY = 250
MAX_PARAM = 6000
MAX_TAG = 8000


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def metric_key(name: str) -> str:
    """A valid MLflow key: letters, digits, ``_ - . / space`` only; at most 250 characters."""
    return clip(re.sub(r"[^\w\-. /]", "_", str(name)), MAX_KEY)


def as_text(value: Any) -> str:
    """A string as is; anything else as sorted JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}``; lists become JSON, values are
    clipped to MLflow's parameter length."""
    out: dict[str, str] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{name}."))
        else:
            out[metric_key(name)] = clip(as_text(v), MAX_PARAM)
    return out
