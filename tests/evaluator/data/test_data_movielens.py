"""MovieLens as CTR on tiny fake folders in RecBole atomic and GroupLens layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ranknas.errors import DataError
from ranknas.evaluator.data import load_movielens
from ranknas.evaluator.data.movielens import ML100K_GENRES, detect_format

# (user, item, rating, timestamp); 881250949 = 1997-12-04 15:55:49 UTC, a Thursday.
RATINGS = [("1", "10", 5, 881250949), ("1", "20", 3, 881250949 + 3600),
           ("2", "10", 4, 881250949 + 86400), ("3", "30", 1, 881250949 + 7200),
           ("2", "20", 2, 881250949 + 60)]
USERS = [("1", 24, "M", "technician", "85711"), ("2", 53, "F", "other", "94043")]  # no user 3
ITEMS = [("10", "Toy Story", 1995, ["Animation", "Comedy"]),
         ("20", "Café Society", 1998, ["Drama"])]  # no item 30


def write_atomic(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    user = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    user += [f"{u}\t{a}\t{g}\t{o}\t{z}" for u, a, g, o, z in USERS]
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item += [f"{i}\t{title}\t{y}\t{' '.join(g)}" for i, title, y, g in ITEMS]
    for name, lines in (("inter", inter), ("user", user), ("item", item)):
        (folder / f"ml-100k.{name}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_grouplens_100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (folder / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in USERS))
    lines = []
    for i, title, year, genres in ITEMS:
        flags = ["1" if g in genres else "0" for g in ML100K_GENRES]
        lines.append("|".join([i, f"{title} ({year})", f"01-Jan-{year}", "", "http://x", *flags]))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def write_grouplens_1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
    # ml-1m gives age codes already: 24 -> 18, 53 -> 50.
    (folder / "users.dat").write_text("1::M::18::19::85711\n2::F::50::0::94043\n")
    (folder / "movies.dat").write_bytes(
        "10::Toy Story (1995)::Animation|Comedy\n20::Café Society (1998)::Drama\n"
        .encode("latin-1"))
    return folder


def everything(data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parts = (data.train, data.valid, data.test)
    return (torch.cat([p.labels for p in parts]), torch.cat([p.dense for p in parts]),
            torch.cat([p.sparse for p in parts]))


def by_user_item(data) -> dict[tuple[int, int], tuple[float, list[float], list[int]]]:
    labels, dense, sparse = everything(data)
    return {(int(s[0]), int(s[1])): (float(y), d.tolist(), s.tolist())
            for y, d, s in zip(labels, dense, sparse, strict=True)}


@pytest.mark.parametrize("writer, fmt", [(write_atomic, "atomic"),
                                         (write_grouplens_100k, "ml-100k"),
                                         (write_grouplens_1m, "ml-1m")])
def test_each_layout_loads_the_same_examples(tmp_path: Path, writer, fmt: str) -> None:
    folder = writer(tmp_path / fmt)
    assert detect_format(folder) == fmt
    data = load_movielens(folder, splits=(0.6, 0.2, 0.2))
    assert data.schema.num_dense == 5 and data.schema.num_sparse == 8
    assert (len(data.train), len(data.valid), len(data.test)) == (3, 1, 1)
    labels, dense, sparse = everything(data)
    assert sorted(labels.tolist()) == [0.0, 0.0, 0.0, 1.0, 1.0]  # ratings 5 and 4 click
    cards = torch.tensor(data.schema.cardinalities)
    assert (sparse >= 0).all() and (sparse < cards).all()
    assert torch.isfinite(dense).all()
    # user 3 and item 30 have no side information: their features are row 0 / dense 0.
    user3 = next(r for r in by_user_item(data).values() if r[1][0] == 0.0)
    assert user3[2][2:6] == [0, 0, 0, 0]  # gender, age, occupation, zip missing
    assert user3[2][6:8] == [0, 0]  # item 30: no genre, no decade


def test_features_of_a_known_rating(tmp_path: Path) -> None:
    data = load_movielens(write_grouplens_100k(tmp_path / "ml"), splits=(1.0, 0.0, 0.0))
    labels, dense, _sparse = everything(data)
    first = next(i for i in range(len(labels)) if dense[i, 0] == pytest.approx(0.24)
                 and dense[i, 1] == pytest.approx(0.95))
    assert labels[first] == 1.0  # user 1 rated item 10 with a 5
    # 15:55 UTC on a Thursday; release 1995 -> 0.95.
    assert dense[first, 2].item() == pytest.approx(15 / 23)
    assert dense[first, 3].item() == pytest.approx(3 / 6)
    assert dense[first, 4].item() == pytest.approx(0.0)  # the earliest rating


def test_genre_and_age_encoding_match_across_layouts(tmp_path: Path) -> None:
    atomic = load_movielens(write_atomic(tmp_path / "a"), splits=(1.0, 0.0, 0.0))
    one_m = load_movielens(write_grouplens_1m(tmp_path / "b"), splits=(1.0, 0.0, 0.0))
    # Same vocabularies: ages 24/53 bucket to the ml-1m codes 18/50, first genres agree.
    assert atomic.schema.cardinalities[2:4] == one_m.schema.cardinalities[2:4]
    assert atomic.schema.cardinalities[6:8] == one_m.schema.cardinalities[6:8]


def test_split_is_seeded(tmp_path: Path) -> None:
    folder = write_atomic(tmp_path / "ml")
    a, b = load_movielens(folder, seed=0), load_movielens(folder, seed=0)
    assert torch.equal(a.train.sparse, b.train.sparse)
    orders = {tuple(load_movielens(folder, seed=s).train.sparse[:, 1].tolist()) for s in range(6)}
    assert len(orders) > 1


def test_threshold_and_max_rows(tmp_path: Path) -> None:
    folder = write_atomic(tmp_path / "ml")
    data = load_movielens(folder, click_threshold=3.0, max_rows=3, splits=(1.0, 0.0, 0.0))
    assert sorted(data.train.labels.tolist()) == [1.0, 1.0, 1.0]


def test_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no MovieLens files"):
        load_movielens(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_movielens(tmp_path / "missing")
    folder = write_grouplens_100k(tmp_path / "ml")
    with open(folder / "u.data", "a") as f:
        f.write("9\t9\tfive\t881250949\n")
    with pytest.raises(DataError, match="rating must be a number") as err:
        load_movielens(folder)
    assert err.value.where == f"{folder / 'u.data'}:6"
    (folder / "u.user").write_text("1|24|M\n")
    with pytest.raises(DataError, match="expected 5") as err:
        load_movielens(folder)
    assert err.value.where == f"{folder / 'u.user'}:1"


def test_atomic_header_is_checked(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "x.inter").write_text("user_id:token\tscore:float\n1\t3\n")
    with pytest.raises(DataError, match="header lacks item_id, rating") as err:
        load_movielens(folder)
    assert err.value.where.endswith("x.inter:1")
