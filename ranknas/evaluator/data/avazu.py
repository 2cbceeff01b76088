"""Streaming reader of the Avazu click-through CSV (Kaggle ``train``, optionally ``.gz``).

The header names the columns: ``id, click, hour, C1, banner_pos, site_id, ..., C14..C21``.
``click`` is the label; ``hour`` (``YYMMDDHH``) becomes two categorical fields (hour of day and
weekday) and two dense features (``hour/23``, ``weekday/6``); every other column except ``id``
is a categorical field, in header order, followed by ``hour_of_day`` and ``weekday``. Encoding,
malformed-line policy and the contiguous (file order = time order) split are shared with Criteo,
see :mod:`ranknas.evaluator.data.categorical`. Columns are split on ``,`` (Avazu has no quoting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranknas.errors import DataError
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.categorical import (
    EncodingOptions,
    ParsedChunk,
    ReadStats,
    check_labels,
    finish_chunk,
    read_table,
    split_columns,
)

AVAZU_DERIVED = ("hour_of_day", "weekday")
_DROPPED = ("id", "click", "hour")
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def hour_features(hours: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``YYMMDDHH`` strings (year 20YY), fully vectorised.

    Args:
        hours: ``[n]`` str.

    Returns:
        ``hour of day [n]`` int64 (0-23), ``weekday [n]`` int64 (Monday = 0) and ``valid [n]``.
    """
    valid = (np.char.str_len(hours) == 8) & np.char.isdecimal(hours)
    num = np.where(valid, hours, "0").astype(np.int64)
    year, month = 2000 + num // 1_000_000, num // 10_000 % 100
    day, hour = num // 100 % 100, num % 100
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _MONTH_DAYS[np.clip(month, 1, 12) - 1] + ((month == 2) & leap)
    valid &= (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days) & (hour <= 23)
    # Days since 1970-01-01 (H. Hinnant's days_from_civil); that day was a Thursday (3).
    y = year - (month <= 2)
    era, yoe = y // 400, y % 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468
    return np.where(valid, hour, 0), np.where(valid, (days + 3) % 7, 0), valid


@dataclass
class AvazuFormat:
    """Parses chunks of Avazu CSV lines; the header fixes the columns."""

    name: str = "avazu"
    has_header: bool = True
    columns: tuple[str, ...] = ()
    sparse_columns: tuple[int, ...] = field(default=())

    @property
    def num_dense(self) -> int:
        return len(AVAZU_DERIVED)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.columns[i] for i in self.sparse_columns) + AVAZU_DERIVED

    def read_header(self, line: str, where: str) -> None:
        columns = tuple(c.strip() for c in line.lstrip("\ufeff").split(","))
        missing = [c for c in ("click", "hour") if c not in columns]
        if missing:
            raise DataError(where, f"header lacks column(s) {', '.join(missing)}; an Avazu "
                                   "training file starts with 'id,click,hour,C1,...' (the Kaggle "
                                   "test file has no click column and cannot be used)")
        if len(set(columns)) != len(columns):
            raise DataError(where, "header repeats a column name")
        self.columns = columns
        self.sparse_columns = tuple(i for i, c in enumerate(columns) if c not in _DROPPED)

    def parse(self, lines: list[str], numbers: list[int]) -> ParsedChunk:
        """Lines -> labels ``[n]``, dense ``[n, 2]`` and tokens ``[n, F]`` (F = columns - 1)."""
        arr, numbers, errors = split_columns(lines, numbers, ",", len(self.columns),
                                             "as many as the header")
        bad: dict[int, str] = {}
        labels = check_labels(arr[:, self.columns.index("click")], bad)
        hours = arr[:, self.columns.index("hour")]
        hour, weekday, valid = hour_features(hours)
        for i in np.flatnonzero(~valid):
            bad.setdefault(int(i), f"hour must be YYMMDDHH, got {str(hours[i])[:20]!r}")
        dense = np.stack([hour / 23.0, weekday / 6.0], axis=1)
        # Derived fields as tokens too, so they share the encoding of every other field.
        tokens = np.concatenate([arr[:, list(self.sparse_columns)],
                                 hour.astype(str)[:, None], weekday.astype(str)[:, None]], axis=1)
        return finish_chunk(labels, dense, tokens, numbers, bad, errors)


def read_avazu(path: str | Path, *, hash_buckets: int | None = None, min_count: int = 1,
               max_rows_per_field: int | None = None, max_rows: int | None = None,
               skip_malformed: bool = False, splits: Sequence[float] = (0.8, 0.1, 0.1),
               chunk_rows: int = 65_536) -> tuple[CTRData, ReadStats]:
    """Read an Avazu CSV file into split tensors.

    Args:
        path: The CSV (optionally ``.gz``) with its header line.
        hash_buckets: Hash tokens into this many rows per field (row 0 = missing); one pass.
        min_count: Without hashing: tokens seen fewer times (and missing ones) map to row 0.
        max_rows_per_field: Cap of embedding rows per field (most frequent tokens kept).
        max_rows: Data lines to read at most (``None`` = all).
        skip_malformed: Count and skip malformed lines instead of raising
            ``DataError("FILE:LINE", ...)``.
        splits: Train/valid/test fractions, contiguous blocks in file order.
        chunk_rows: Lines parsed at a time.

    Returns:
        ``CTRData`` with ``dense [N, 2]``, ``sparse [N, F]`` (23 fields for the Kaggle header),
        ``labels [N]``, and ``ReadStats``.
    """
    encoding = EncodingOptions(hash_buckets, min_count, max_rows_per_field)
    return read_table(path, AvazuFormat(), encoding=encoding, max_rows=max_rows,
                      skip_malformed=skip_malformed, splits=splits, chunk_rows=chunk_rows)
