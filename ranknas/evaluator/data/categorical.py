"""Shared machinery of the file readers: id encoding, malformed-row policy, splits, streaming.

A format (Criteo, Avazu) only says how one chunk of text lines becomes labels, dense features and
raw categorical tokens (see :class:`TableFormat`); :func:`read_table` does the rest:

* streams the file in chunks of lines (``.gz`` too), so big files never sit in memory as text;
* encodes every sparse field's tokens either by a **stable hash** (``zlib.crc32`` of the UTF-8
  token, never Python's salted ``hash()``) into ``hash_buckets`` buckets, or by a **vocabulary** of
  tokens seen at least ``min_count`` times (a first counting pass, then a mapping pass); index 0
  is reserved for missing, rare and unseen tokens;
* raises :class:`DataError` ``FILE:LINE`` on a malformed row, or with ``skip_malformed`` counts
  it in :class:`ReadStats` and skips it;
* splits the kept rows into **contiguous blocks in file order** (train first, then valid, then
  test): Criteo and Avazu files are time ordered, so this is a train-on-past split.
"""

from __future__ import annotations

import gzip
import io
import itertools
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ranknas.errors import DataError
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.schema import Batch, DataSchema

_MAX_EXAMPLES = 5  # malformed lines quoted in ReadStats


def validate_splits(splits: Sequence[float]) -> tuple[float, float, float]:
    """Check train/valid/test fractions: three non-negative numbers summing to 1, train > 0."""
    fr = tuple(float(s) for s in splits)
    if len(fr) != 3 or min(fr) < 0 or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError("splits", f"give 3 fractions (train > 0, valid, test >= 0) summing to 1, "
                                  f"got {tuple(splits)}")
    return fr  # type: ignore[return-value]


def split_sizes(n: int, splits: Sequence[float]) -> tuple[int, int, int]:
    """Rows of each split: cumulative rounding, so sizes sum to ``n`` and train gets row 0."""
    fr = validate_splits(splits)
    a = min(n, max(1 if n else 0, round(n * fr[0])))
    b = min(n, max(a, round(n * (fr[0] + fr[1]))))
    return a, b - a, n - b


def tensors_to_data(schema: DataSchema, labels: np.ndarray, dense: np.ndarray,
                    sparse: np.ndarray, splits: Sequence[float]) -> CTRData:
    """Contiguous split of numpy arrays ``labels [N]``, ``dense [N, D]``, ``sparse [N, F]``."""
    n_train, n_valid, _ = split_sizes(len(labels), splits)
    lab = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
    den = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    spa = torch.from_numpy(np.ascontiguousarray(sparse, dtype=np.int64))
    cuts = (0, n_train, n_train + n_valid, len(labels))
    parts = [Batch(den[a:b], spa[a:b], lab[a:b]) for a, b in itertools.pairwise(cuts)]
    return CTRData(schema, *parts)


@dataclass(frozen=True)
class EncodingOptions:
    """How raw categorical tokens become embedding rows.

    Args:
        hash_buckets: Hash each token into this many rows per field (row 0 = missing); one pass.
            ``None`` builds a vocabulary instead (two passes).
        min_count: Vocabulary mode: tokens seen fewer times map to row 0.
        max_rows_per_field: Cap of rows per field (the most frequent tokens win in vocabulary
            mode; in hash mode the bucket count is capped).
    """

    hash_buckets: int | None = None
    min_count: int = 1
    max_rows_per_field: int | None = None

    def __post_init__(self) -> None:
        if self.hash_buckets is not None and self.hash_buckets < 2:
            raise DataError("hash_buckets",
                            f"need >= 2 (row 0 is missing), got {self.hash_buckets}")
        if self.min_count < 1:
            raise DataError("min_count", f"must be >= 1, got {self.min_count}")
        if self.hash_buckets is not None and self.min_count > 1:
            raise DataError("min_count", "choose hash_buckets or min_count, not both")
        if self.max_rows_per_field is not None and self.max_rows_per_field < 2:
            raise DataError("max_rows_per_field",
                            f"need >= 2 (row 0 is missing), got {self.max_rows_per_field}")

    @property
    def buckets(self) -> int | None:
        """Effective hash buckets per field (``None`` in vocabulary mode)."""
        if self.hash_buckets is None:
            return None
        cap = self.max_rows_per_field
        return self.hash_buckets if cap is None else min(self.hash_buckets, cap)


def stable_hash(tokens: Sequence[str], buckets: int) -> np.ndarray:
    """Bucket of each token in ``[1, buckets)``, ``0`` for the empty (missing) token.

    The hash is ``crc32`` of the token's UTF-8 bytes: the same on every run and machine.
    """
    out = np.fromiter((zlib.crc32(t.encode("utf-8", "surrogateescape")) if t else 0
                       for t in tokens), dtype=np.int64, count=len(tokens))
    return np.where(out == 0, 0, out % (buckets - 1) + 1) if len(tokens) else out


def build_vocabulary(counts: Counter, options: EncodingOptions) -> dict[str, int]:
    """Token -> row (1..) for tokens with ``count >= min_count``, most frequent first.

    Ties break by token so the mapping does not depend on file order.
    """
    kept = sorted(((c, t) for t, c in counts.items() if t and c >= options.min_count),
                  key=lambda ct: (-ct[0], ct[1]))
    if options.max_rows_per_field is not None:
        kept = kept[:options.max_rows_per_field - 1]
    return {t: i + 1 for i, (_, t) in enumerate(kept)}


@dataclass
class ReadStats:
    """What a reader saw, so nothing is dropped silently.

    Attributes:
        path: The file read.
        lines: Data lines read (header excluded, blank lines included).
        rows: Rows kept.
        malformed: Malformed lines skipped (only with ``skip_malformed=True``).
        blank: Blank lines skipped.
        examples: Up to 5 ``FILE:LINE: reason`` of skipped lines.
        cardinalities: Rows of each sparse field after encoding.
    """

    path: str
    lines: int = 0
    rows: int = 0
    malformed: int = 0
    blank: int = 0
    examples: list[str] = field(default_factory=list)
    cardinalities: tuple[int, ...] = ()

    def summary(self) -> str:
        text = (f"{self.path}: kept {self.rows} of {self.lines} lines, skipped "
                f"{self.malformed} malformed and {self.blank} blank")
        return text + (f" (first: {self.examples[0]})" if self.examples else "")


@dataclass
class ParsedChunk:
    """One chunk of lines, parsed. Rows listed in ``errors`` are absent from the arrays.

    Attributes:
        labels: ``[n]`` float32 in {0, 1}.
        dense: ``[n, D]`` float32, already transformed.
        tokens: ``[n, F]`` str array of raw categorical tokens, ``""`` = missing.
        errors: ``(line number, reason)`` of each malformed line.
    """

    labels: np.ndarray
    dense: np.ndarray
    tokens: np.ndarray
    errors: list[tuple[int, str]]


class TableFormat(Protocol):
    """What a file format provides to :func:`read_table`."""

    name: str
    has_header: bool

    @property
    def num_dense(self) -> int: ...

    @property
    def field_names(self) -> tuple[str, ...]: ...

    def read_header(self, line: str, where: str) -> None: ...

    def parse(self, lines: list[str], numbers: list[int]) -> ParsedChunk: ...


def check_labels(labels: np.ndarray, bad: dict[int, str]) -> np.ndarray:
    """Labels ``[n]`` str -> float32; rows whose label is not ``0``/``1`` go to ``bad``."""
    ok = (labels == "0") | (labels == "1")
    for i in np.flatnonzero(~ok):
        bad.setdefault(int(i), f"label must be 0 or 1, got {str(labels[i])[:20]!r}")
    return (labels == "1").astype(np.float32)


def parse_ints(values: np.ndarray, names: Sequence[str], bad: dict[int, str]) -> np.ndarray:
    """``[n, D]`` str -> int64, ``""`` -> 0; rows with a non-integer go to ``bad``."""
    filled = np.where(values == "", "0", values)
    try:
        return filled.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    # Slow path, only for a chunk holding a bad value: find which rows, keep the others.
    out = np.zeros(filled.shape, dtype=np.int64)
    for i, row in enumerate(filled):
        try:
            out[i] = row.astype(np.int64)
        except (ValueError, OverflowError):
            j = next(j for j, v in enumerate(row) if not _is_int(v))
            bad.setdefault(i, f"{names[j]} must be an integer or empty, got {str(row[j])[:20]!r}")
    return out


def _is_int(value: str) -> bool:
    try:
        np.array([value]).astype(np.int64)
    except (ValueError, OverflowError):
        return False
    return True


def split_columns(lines: list[str], numbers: list[int], sep: str, width: int,
                  layout: str) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Split lines on ``sep`` into a ``[n, width]`` str array of the lines of the right width.

    Args:
        lines: Text lines without their line ends.
        numbers: File line number of each line.
        sep: Column separator.
        width: Expected column count.
        layout: Words for the error message, e.g. ``"label, 13 integer, 26 categorical"``.

    Returns:
        The array, the line numbers of its rows, and ``(line number, reason)`` of the others.
    """
    rows = [line.split(sep) for line in lines]
    errors = [(numbers[i], f"expected {width} {'tab' if sep == chr(9) else repr(sep)}-separated "
                           f"columns ({layout}), got {len(r)}")
              for i, r in enumerate(rows) if len(r) != width]
    if errors:
        keep = [i for i, r in enumerate(rows) if len(r) == width]
        rows, numbers = [rows[i] for i in keep], [numbers[i] for i in keep]
    arr = np.array(rows, dtype=str) if rows else np.empty((0, width), dtype=str)
    return arr.reshape(len(rows), width), numbers, errors


def finish_chunk(labels: np.ndarray, dense: np.ndarray, tokens: np.ndarray, numbers: list[int],
                 bad: dict[int, str], errors: list[tuple[int, str]]) -> ParsedChunk:
    """Drop the rows listed in ``bad`` (row index -> reason) and collect every error."""
    if bad:
        keep = np.ones(len(labels), dtype=bool)
        keep[list(bad)] = False
        errors = errors + [(numbers[i], reason) for i, reason in bad.items()]
        labels, dense, tokens = labels[keep], dense[keep], tokens[keep]
    return ParsedChunk(labels, dense.astype(np.float32), tokens, errors)


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping ``.gz``; odd bytes never crash decoding."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="surrogateescape",
                                newline="")
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def _chunks(path: Path, fmt: TableFormat, max_rows: int | None, chunk_rows: int,
            stats: ReadStats) -> Iterator[tuple[list[str], list[int]]]:
    """Yield ``(lines, line numbers)`` of up to ``chunk_rows`` non-blank data lines."""
    if not path.is_file():
        raise DataError(str(path), "no such file; check the path after the scheme "
                                   "(e.g. criteo:/data/train.txt)")
    lines: list[str] = []
    numbers: list[int] = []
    header_seen = not fmt.has_header
    with open_text(path) as f:
        try:
            for number, raw in enumerate(f, start=1):
                line = raw.rstrip("\r\n")
                if number == 1 and fmt.has_header:
                    fmt.read_header(line, f"{path}:1")
                    header_seen = True
                    continue
                if max_rows is not None and stats.lines >= max_rows:
                    break
                stats.lines += 1
                if not line.strip():
                    stats.blank += 1
                    continue
                lines.append(line)
                numbers.append(number)
                if len(lines) >= chunk_rows:
                    yield lines, numbers
                    lines, numbers = [], []
        except (OSError, EOFError, zlib.error) as exc:  # e.g. a truncated .gz
            raise DataError(str(path), f"cannot read the file: {exc}") from exc
    if not header_seen:
        raise DataError(f"{path}:1", f"empty file; a {fmt.name} file starts with a header line")
    if lines:
        yield lines, numbers


def _parsed(path: Path, fmt: TableFormat, max_rows: int | None, chunk_rows: int,
            skip_malformed: bool, stats: ReadStats) -> Iterator[ParsedChunk]:
    for lines, numbers in _chunks(path, fmt, max_rows, chunk_rows, stats):
        chunk = fmt.parse(lines, numbers)
        if chunk.errors and not skip_malformed:
            number, reason = min(chunk.errors)
            raise DataError(f"{path}:{number}", f"{reason}. Fix or delete the line, or pass "
                                                "skip_malformed=True to count and skip such lines")
        stats.malformed += len(chunk.errors)
        for number, reason in sorted(chunk.errors)[:_MAX_EXAMPLES - len(stats.examples)]:
            stats.examples.append(f"{path}:{number}: {reason}")
        stats.rows += len(chunk.labels)
        yield chunk


def read_table(path: str | Path, fmt: TableFormat, *, encoding: EncodingOptions,
               max_rows: int | None = None, skip_malformed: bool = False,
               splits: Sequence[float] = (0.8, 0.1, 0.1),
               chunk_rows: int = 65_536) -> tuple[CTRData, ReadStats]:
    """Stream ``path`` in ``fmt`` into a split :class:`CTRData`.

    Args:
        path: The file (``.gz`` is decompressed on the fly).
        fmt: The format: parses chunks of lines.
        encoding: Hashing or vocabulary of categorical tokens.
        max_rows: Data lines to read at most (``None`` = all).
        skip_malformed: Count and skip malformed lines instead of raising.
        splits: Train/valid/test fractions of the kept rows, contiguous in file order.
        chunk_rows: Lines parsed at a time.

    Returns:
        The data (``dense [N, D]``, ``sparse [N, F]``, ``labels [N]``) and the read statistics.
    """
    path = Path(path)
    splits = validate_splits(splits)
    if max_rows is not None and max_rows < 1:
        raise DataError("max_rows", f"must be >= 1 or None, got {max_rows}")
    if chunk_rows < 1:
        raise DataError("chunk_rows", f"must be >= 1, got {chunk_rows}")
    buckets = encoding.buckets
    vocabs: list[dict[str, int]] | None = None
    if buckets is None:
        # Pass 1: count tokens per field (and fail fast on the first malformed line).
        counts: list[Counter] = []
        for chunk in _parsed(path, fmt, max_rows, chunk_rows, skip_malformed, ReadStats(str(path))):
            counts = counts or [Counter() for _ in range(chunk.tokens.shape[1])]
            for f, counter in enumerate(counts):
                counter.update(chunk.tokens[:, f].tolist())
        vocabs = [build_vocabulary(c, encoding) for c in counts]

    stats = ReadStats(str(path))
    labels, dense, sparse = [], [], []
    for chunk in _parsed(path, fmt, max_rows, chunk_rows, skip_malformed, stats):
        cols = [chunk.tokens[:, f].tolist() for f in range(chunk.tokens.shape[1])]
        if vocabs is None:
            ids = [stable_hash(col, buckets) for col in cols]  # type: ignore[arg-type]
        else:
            ids = [np.fromiter((vocab.get(t, 0) for t in col), np.int64, len(col))
                   for vocab, col in zip(vocabs, cols, strict=True)]
        labels.append(chunk.labels)
        dense.append(chunk.dense)
        sparse.append(np.stack(ids, axis=1) if ids else np.zeros((len(chunk.labels), 0)))
    if stats.rows == 0:
        raise DataError(str(path), f"no valid {fmt.name} rows found ({stats.summary()})")
    num_fields = len(fmt.field_names)
    cards = ((buckets,) * num_fields if vocabs is None
             else tuple(len(v) + 1 for v in vocabs))
    stats.cardinalities = cards
    schema = DataSchema(fmt.num_dense, cards, fmt.name)
    data = tensors_to_data(schema, np.concatenate(labels), np.concatenate(dense),
                           np.concatenate(sparse), splits)
    return data, stats
