"""One entry point from a data spec string to :class:`CTRData`.

Specs: ``synthetic``, ``criteo:PATH``, ``avazu:PATH``, ``movielens:PATH`` and ``movielens-100k``
(the folder written by ``ranknas data fetch movielens-100k``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ranknas.errors import DataError
from ranknas.evaluator.data.avazu import read_avazu
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.criteo import read_criteo
from ranknas.evaluator.data.fetch import ML100K_DIR, default_cache_dir
from ranknas.evaluator.data.movielens import load_movielens
from ranknas.evaluator.data.synthetic import SyntheticConfig, make_synthetic

log = logging.getLogger(__name__)

KNOWN_SPECS = ("synthetic", "criteo:PATH", "avazu:PATH", "movielens:PATH", "movielens-100k")


def _check_options(where: str, fn: Callable[..., Any], options: dict[str, Any],
                   extra: tuple[str, ...] = ()) -> None:
    """Turn an unknown keyword into a DataError listing the accepted ones."""
    params = inspect.signature(fn).parameters
    accepted = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} | set(extra)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DataError(f"{where}.{unknown[0]}",
                        f"unknown data option; accepted: {', '.join(sorted(accepted))}")


def _path(spec: str, scheme: str) -> Path:
    raw = spec[len(scheme) + 1:]
    if not raw:
        raise DataError(spec, f"missing path: write {scheme}:PATH")
    return Path(raw).expanduser()


def load_data(spec: str, *, rows: int | None = 200_000, seed: int = 0,
              device: torch.device | str = "cpu", **options: Any) -> CTRData:
    """Load the dataset named by ``spec`` onto ``device``.

    Args:
        spec: ``synthetic``, ``criteo:PATH``, ``avazu:PATH``, ``movielens:PATH`` or
            ``movielens-100k``.
        rows: Synthetic: examples to generate. Files: data lines to read at most (the first
            ``rows``; ``None`` = all).
        seed: Synthetic teacher and rows; MovieLens split permutation. Criteo/Avazu splits are
            contiguous in file order and need no seed.
        device: Where the tensors end up (synthetic data is generated there).
        **options: Passed to the reader: :func:`make_synthetic` (``num_dense``,
            ``cardinalities``, ``base_ctr``, ``splits``, teacher knobs), :func:`read_criteo` /
            :func:`read_avazu` (``hash_buckets``, ``min_count``, ``max_rows_per_field``,
            ``skip_malformed``, ``splits``, ...) or :func:`load_movielens`.

    Returns:
        ``CTRData`` with ``dense [N, D]``, ``sparse [N, F]``, ``labels [N]`` per split.
    """
    if not isinstance(spec, str) or not spec:
        raise DataError("data", f"give a data spec string, one of: {', '.join(KNOWN_SPECS)}")
    scheme = spec.split(":", 1)[0]
    if scheme == "synthetic":
        if spec != "synthetic":
            raise DataError(spec, "the synthetic data takes no path; write 'synthetic'")
        if rows is None or rows < 1:
            raise DataError("rows", f"synthetic data needs rows >= 1, got {rows}")
        extra = tuple(f for f in SyntheticConfig.__dataclass_fields__ if f not in ("rows", "seed"))
        _check_options("synthetic", make_synthetic, options, extra)
        return make_synthetic(rows, seed, device=device, **options)
    if scheme in ("criteo", "avazu"):
        reader = read_criteo if scheme == "criteo" else read_avazu
        _check_options(scheme, reader, options)
        options.setdefault("max_rows", rows)
        data, stats = reader(_path(spec, scheme), **options)
        if stats.malformed or stats.blank:
            log.warning("%s", stats.summary())  # skipped lines are reported, never silent
        return data.to(device)
    if scheme in ("movielens", "movielens-100k"):
        if scheme == "movielens":
            folder = _path(spec, scheme)
        else:
            if spec != "movielens-100k":
                raise DataError(spec, "write 'movielens-100k' or 'movielens:PATH'")
            folder = default_cache_dir() / ML100K_DIR
            if not folder.is_dir():
                raise DataError(spec, f"{folder} does not exist; run 'ranknas data fetch "
                                      "movielens-100k' first (or set RANKNAS_CACHE)")
        _check_options("movielens", load_movielens, options)
        options.setdefault("max_rows", rows)
        options.setdefault("seed", seed)
        return load_movielens(folder, **options).to(device)
    raise DataError(spec, f"unknown data spec; known: {', '.join(KNOWN_SPECS)}")
