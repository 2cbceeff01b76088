"""MovieLens ratings as a CTR task: a rating ``>= 4`` is a click.

:func:`load_movielens` reads a folder in one of three layouts, detected from its files:

* RecBole atomic files (what ``ranknas data fetch movielens-100k`` stores): ``NAME.inter``
  (``user_id:token  item_id:token  rating:float  timestamp:float``), optional ``NAME.user``
  (``user_id age gender occupation zip_code``) and ``NAME.item`` (``item_id movie_title
  release_year class``; ``class``/``genre`` is a space-separated list), tab separated, UTF-8;
* GroupLens ml-100k: ``u.data`` (tab separated) and optional ``u.user``/``u.item`` (``|``),
  latin-1;
* GroupLens ml-1m (and ml-10m): ``ratings.dat`` and optional ``users.dat``/``movies.dat``
  (``::``), latin-1.

Sparse fields (F = 8): user id, item id, gender, age bucket (ml-1m codes 1/18/25/35/45/50/56),
occupation, zip prefix (3 characters), first genre, release decade; a missing side file or value
maps to row 0. Dense features (D = 5): age/100, (release year - 1900)/100, hour of day/23,
weekday/6 (UTC) and the rating time's position in the file's time span. The split is a seeded
random permutation of the ratings, cut into train/valid/test by ``splits``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ranknas.errors import DataError
from ranknas.evaluator.data.base import CTRData
from ranknas.evaluator.data.categorical import (
    EncodingOptions,
    build_vocabulary,
    split_columns,
    tensors_to_data,
    validate_splits,
)
from ranknas.evaluator.data.schema import DataSchema

MOVIELENS_FIELDS = ("user_id", "item_id", "gender", "age", "occupation", "zip", "genre",
                    "decade")
MOVIELENS_DENSE = ("age", "release_year", "hour_of_day", "weekday", "time")
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
_AGE_CODES = np.array([1, 18, 25, 35, 45, 50, 56])
_YEAR = re.compile(r"(1[89]\d\d|20\d\d)")

# user token -> (age, gender, occupation, zip); item token -> (release year, first genre)
Users = dict[str, tuple[int | None, str, str, str]]
Items = dict[str, tuple[int | None, str]]


def _lines(path: Path, encoding: str, *, header: bool = False,
           max_rows: int | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of ``path`` (header skipped if asked)."""
    with open(path, encoding=encoding, errors="surrogateescape", newline="") as f:
        kept = 0
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if (header and number == 1) or not line.strip():
                continue
            if max_rows is not None and kept >= max_rows:
                return
            kept += 1
            yield number, line


def _table(path: Path, sep: str, width: int, layout: str, encoding: str, *,
           header: bool = False, max_rows: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Whole file as a ``[n, width]`` str array; a wrong-width line raises ``FILE:LINE``."""
    pairs = list(_lines(path, encoding, header=header, max_rows=max_rows))
    arr, numbers, errors = split_columns([t for _, t in pairs], [n for n, _ in pairs], sep, width,
                                         layout)
    if errors:
        number, reason = errors[0]
        raise DataError(f"{path}:{number}", f"{reason}; fix or delete the line")
    return arr, numbers


def _numbers(col: np.ndarray, numbers: list[int], path: Path, name: str) -> np.ndarray:
    """``[n]`` str -> float64; the first non-number raises ``FILE:LINE``."""
    try:
        return col.astype(np.float64)
    except ValueError:
        for value, number in zip(col, numbers, strict=True):
            try:
                float(value)
            except ValueError:
                raise DataError(f"{path}:{number}",
                                f"{name} must be a number, got {str(value)[:20]!r}") from None
        raise DataError(str(path), f"the {name} column holds a value numpy cannot parse") from None


def _atomic_header(path: Path, required: Sequence[str]) -> dict[str, int]:
    """Column name -> index from a RecBole header like ``user_id:token<TAB>age:token``."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        first = f.readline().rstrip("\r\n")
    columns = {c.split(":", 1)[0].strip(): i for i, c in enumerate(first.split("\t"))}
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{path}:1", f"header lacks {', '.join(missing)}; a RecBole atomic file "
                                     "starts with e.g. 'user_id:token<TAB>item_id:token...'")
    return columns


def _read_atomic(inter: Path, max_rows: int | None) -> tuple[np.ndarray, list[int], Users, Items]:
    cols = _atomic_header(inter, ("user_id", "item_id", "rating"))
    arr, numbers = _table(inter, "\t", len(cols), "as many as the header", "utf-8", header=True,
                          max_rows=max_rows)
    ts = (arr[:, cols["timestamp"]] if "timestamp" in cols
          else np.zeros(len(arr), dtype=str))
    ratings = np.stack([arr[:, cols["user_id"]], arr[:, cols["item_id"]],
                        arr[:, cols["rating"]], np.where(ts == "", "0", ts)], axis=1)
    users: Users = {}
    user_file = inter.with_suffix(".user")
    if user_file.is_file():
        ucols = _atomic_header(user_file, ("user_id",))
        uarr, _ = _table(user_file, "\t", len(ucols), "as many as the header", "utf-8",
                         header=True)
        for row in uarr:
            def get(name: str, row: np.ndarray = row) -> str:
                return str(row[ucols[name]]) if name in ucols else ""
            age = get("age")
            users[get("user_id")] = (int(age) if age.isdigit() else None, get("gender"),
                                     get("occupation"), get("zip_code"))
    items: Items = {}
    item_file = inter.with_suffix(".item")
    if item_file.is_file():
        icols = _atomic_header(item_file, ("item_id",))
        genre = "class" if "class" in icols else "genre" if "genre" in icols else None
        iarr, _ = _table(item_file, "\t", len(icols), "as many as the header", "utf-8",
                         header=True)
        for row in iarr:
            year = str(row[icols["release_year"]]) if "release_year" in icols else ""
            genres = str(row[icols[genre]]).split() if genre else []
            items[str(row[icols["item_id"]])] = (int(year) if year.isdigit() else None,
                                                 genres[0] if genres else "")
    return ratings, numbers, users, items


def _read_ml100k(folder: Path,
                 max_rows: int | None) -> tuple[np.ndarray, list[int], Users, Items]:
    ratings, numbers = _table(folder / "u.data", "\t", 4, "user, item, rating, timestamp",
                              "latin-1", max_rows=max_rows)
    users: Users = {}
    if (folder / "u.user").is_file():
        uarr, _ = _table(folder / "u.user", "|", 5, "user|age|gender|occupation|zip", "latin-1")
        users = {str(u): (int(a) if str(a).isdigit() else None, str(g), str(o), str(z))
                 for u, a, g, o, z in uarr}
    items: Items = {}
    if (folder / "u.item").is_file():
        genres = ML100K_GENRES
        if (folder / "u.genre").is_file():
            names = [line.split("|")[0] for _, line in _lines(folder / "u.genre", "latin-1")]
            genres = tuple(names) or genres
        width = 5 + len(genres)
        iarr, _ = _table(folder / "u.item", "|", width,
                         f"id|title|release date|video date|url|{len(genres)} genre flags",
                         "latin-1")
        for row in iarr:
            year = str(row[2])[-4:]
            flags = [i for i, v in enumerate(row[5:]) if v == "1"]
            items[str(row[0])] = (int(year) if year.isdigit() else None,
                                  genres[flags[0]] if flags else "")
    return ratings, numbers, users, items


def _read_ml1m(folder: Path, max_rows: int | None) -> tuple[np.ndarray, list[int], Users, Items]:
    ratings, numbers = _table(folder / "ratings.dat", "::", 4, "user::item::rating::timestamp",
                              "latin-1", max_rows=max_rows)
    users: Users = {}
    if (folder / "users.dat").is_file():
        uarr, _ = _table(folder / "users.dat", "::", 5, "user::gender::age::occupation::zip",
                         "latin-1")
        users = {str(u): (int(a) if str(a).isdigit() else None, str(g), str(o), str(z))
                 for u, g, a, o, z in uarr}
    items: Items = {}
    if (folder / "movies.dat").is_file():
        iarr, _ = _table(folder / "movies.dat", "::", 3, "item::title::genres", "latin-1")
        for item, title, genres in iarr:
            years = _YEAR.findall(str(title))
            items[str(item)] = (int(years[-1]) if years else None, str(genres).split("|")[0])
    return ratings, numbers, users, items


def detect_format(folder: Path) -> str:
    """``"atomic"``, ``"ml-100k"`` or ``"ml-1m"`` from the files in ``folder``."""
    if not folder.is_dir():
        raise DataError(str(folder), "not a folder; point movielens:PATH at the folder holding "
                                     "ml-100k.inter, u.data or ratings.dat")
    inters = sorted(folder.glob("*.inter"))
    if len(inters) > 1:
        raise DataError(str(folder), f"several .inter files ({', '.join(p.name for p in inters)}"
                                     "); keep one dataset per folder")
    if inters:
        return "atomic"
    if (folder / "u.data").is_file():
        return "ml-100k"
    if (folder / "ratings.dat").is_file():
        return "ml-1m"
    raise DataError(str(folder), "no MovieLens files found: expected NAME.inter (RecBole), "
                                 "u.data (GroupLens ml-100k) or ratings.dat (ml-1m); run "
                                 "'ranknas data fetch movielens-100k' or download from "
                                 "https://grouplens.org/datasets/movielens/")


def _encode(tokens: Sequence[str], options: EncodingOptions) -> tuple[np.ndarray, int]:
    """Tokens ``[n]`` -> ids ``[n]`` (0 = missing or rare) and the field's row count."""
    vocab = build_vocabulary(Counter(tokens), options)
    return np.fromiter((vocab.get(t, 0) for t in tokens), np.int64, len(tokens)), len(vocab) + 1


def load_movielens(path: str | Path, *, seed: int = 0, max_rows: int | None = None,
                   click_threshold: float = 4.0, min_count: int = 1,
                   splits: Sequence[float] = (0.8, 0.1, 0.1)) -> CTRData:
    """Load a MovieLens folder (layout auto-detected) as CTR data.

    Args:
        path: The folder (RecBole atomic, GroupLens ml-100k or ml-1m files).
        seed: Seed of the train/valid/test permutation.
        max_rows: Ratings lines to read at most (``None`` = all; ml-1m's file is user-sorted).
        click_threshold: A rating ``>=`` this is a click.
        min_count: Sparse ids seen fewer times map to row 0.
        splits: Train/valid/test fractions of the shuffled ratings.

    Returns:
        ``CTRData`` with ``dense [N, 5]``, ``sparse [N, 8]`` and ``labels [N]``.
    """
    folder = Path(path).expanduser()
    splits = validate_splits(splits)
    fmt = detect_format(folder)
    reader = {"atomic": lambda: _read_atomic(next(folder.glob("*.inter")), max_rows),
              "ml-100k": lambda: _read_ml100k(folder, max_rows),
              "ml-1m": lambda: _read_ml1m(folder, max_rows)}[fmt]
    ratings, numbers, users, items = reader()
    if len(ratings) == 0:
        raise DataError(str(folder), "no ratings found")
    source = next(folder.glob("*.inter")) if fmt == "atomic" else folder / (
        "u.data" if fmt == "ml-100k" else "ratings.dat")
    rating = _numbers(ratings[:, 2], numbers, source, "rating")
    ts = _numbers(ratings[:, 3], numbers, source, "timestamp").astype(np.int64)

    user_tok, item_tok = ratings[:, 0].tolist(), ratings[:, 1].tolist()
    no_user, no_item = (None, "", "", ""), (None, "")
    u = [users.get(t, no_user) for t in user_tok]
    it = [items.get(t, no_item) for t in item_tok]
    ages = np.array([a if a is not None else -1 for a, *_ in u], dtype=np.int64)
    years = np.array([y if y is not None else -1 for y, _ in it], dtype=np.int64)
    # ml-100k gives raw ages; ml-1m already gives these codes: both end up as codes.
    codes = _AGE_CODES[np.clip(np.searchsorted(_AGE_CODES, ages, side="right") - 1, 0, None)]
    fields = [user_tok, item_tok, [g for _, g, _, _ in u],
              [str(c) if a >= 0 else "" for a, c in zip(ages, codes, strict=True)],
              [o for *_, o, _ in u], [z[:3] for *_, z in u], [g for _, g in it],
              [f"{y // 10 * 10}s" if y >= 0 else "" for y in years]]
    options = EncodingOptions(min_count=min_count)
    encoded = [_encode(col, options) for col in fields]
    sparse = np.stack([ids for ids, _ in encoded], axis=1)
    span = max(int(ts.max() - ts.min()), 1)
    dense = np.stack([np.where(ages >= 0, ages / 100.0, 0.0),
                      np.where(years >= 0, np.clip((years - 1900) / 100.0, 0.0, 1.5), 0.0),
                      (ts // 3600 % 24) / 23.0, ((ts // 86_400 + 3) % 7) / 6.0,
                      (ts - ts.min()) / span], axis=1)
    labels = (rating >= click_threshold).astype(np.float32)
    # Seeded shuffle: MovieLens files are sorted by user or arbitrary, not a time stream.
    order = np.random.default_rng(seed).permutation(len(labels))
    schema = DataSchema(len(MOVIELENS_DENSE), tuple(c for _, c in encoded), "movielens")
    return tensors_to_data(schema, labels[order], dense[order], sparse[order], splits)
