"""Streaming reader of Criteo display-advertising TSV files (Kaggle ``train.txt``, Terabyte days).

Each line is ``label <TAB> I1..I13 <TAB> C1..C26``: a 0/1 label, 13 integer counts and 26
hashed-hex categorical tokens; an empty column is missing. Dense features become
``log1p(max(x, 0))`` (missing -> 0); categorical tokens are hashed or thresholded as described in
:mod:`ranknas.evaluator.data.categorical`. The split is contiguous in file order (Criteo files are
ordered by time): the first ``splits[0]`` of kept rows train, the next ``splits[1]`` validate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.categorical import (
    EncodingOptions,
    ParsedChunk,
    ReadStats,
    check_labels,
    finish_chunk,
    parse_ints,
    read_table,
    split_columns,
)

CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_SPARSE = tuple(f"C{i}" for i in range(1, 27))
_WIDTH = 1 + len(CRITEO_DENSE) + len(CRITEO_SPARSE)


@dataclass
class CriteoFormat:
    """Parses chunks of Criteo lines (no header)."""

    name: str = "criteo"
    has_header: bool = False

    @property
    def num_dense(self) -> int:
        return len(CRITEO_DENSE)

    @property
    def field_names(self) -> tuple[str, ...]:
        return CRITEO_SPARSE

    def read_header(self, line: str, where: str) -> None:  # Criteo files have no header
        del line, where

    def parse(self, lines: list[str], numbers: list[int]) -> ParsedChunk:
        """Lines -> labels ``[n]``, ``log1p`` dense ``[n, 13]``, tokens ``[n, 26]``."""
        arr, numbers, errors = split_columns(lines, numbers, "\t", _WIDTH,
                                             "label, 13 integer, 26 categorical")
        bad: dict[int, str] = {}
        labels = check_labels(arr[:, 0], bad)
        counts = parse_ints(arr[:, 1:1 + len(CRITEO_DENSE)], CRITEO_DENSE, bad)
        # Counts are heavy-tailed; a few are negative (-1, -2): clip at 0 before log1p.
        dense = np.log1p(np.maximum(counts, 0).astype(np.float64))
        return finish_chunk(labels, dense, arr[:, 1 + len(CRITEO_DENSE):], numbers, bad, errors)


def read_criteo(path: str | Path, *, hash_buckets: int | None = None, min_count: int = 1,
                max_rows_per_field: int | None = None, max_rows: int | None = None,
                skip_malformed: bool = False, splits: Sequence[float] = (0.8, 0.1, 0.1),
                chunk_rows: int = 65_536) -> tuple[CTRData, ReadStats]:
    """Read a Criteo TSV file into split tensors.

    Args:
        path: ``train.txt`` (or ``day_N``, optionally ``.gz``).
        hash_buckets: Hash tokens into this many rows per field (row 0 = missing); one pass.
        min_count: Without hashing: tokens seen fewer times (and missing ones) map to row 0.
        max_rows_per_field: Cap of embedding rows per field (most frequent tokens kept).
        max_rows: Lines to read at most (``None`` = the whole file).
        skip_malformed: Count and skip malformed lines (see ``ReadStats``) instead of raising
            ``DataError("FILE:LINE", ...)``.
        splits: Train/valid/test fractions, contiguous blocks in file order.
        chunk_rows: Lines parsed at a time.

    Returns:
        ``CTRData`` with ``dense [N, 13]``, ``sparse [N, 26]``, ``labels [N]``, and ``ReadStats``.
    """
    encoding = EncodingOptions(hash_buckets, min_count, max_rows_per_field)
    return read_table(path, CriteoFormat(), encoding=encoding, max_rows=max_rows,
                      skip_malformed=skip_malformed, splits=splits, chunk_rows=chunk_rows)
