"""Criteo and Avazu readers on tiny files: encoding, transforms, splits, malformed rows."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranknas.errors import DataError
from ranknas.evaluator.data import read_avazu, read_criteo
from ranknas.evaluator.data.avazu import hour_features
from ranknas.evaluator.data.categorical import stable_hash

AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
                "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
                "C14,C15,C16,C17,C18,C19,C20,C21")


def criteo_line(label: str = "1", dense: list[str] | None = None,
                cats: list[str] | None = None) -> str:
    dense = dense if dense is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return "\t".join([label, *dense, *cats])


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def all_rows(data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parts = (data.train, data.valid, data.test)
    return (torch.cat([p.labels for p in parts]), torch.cat([p.dense for p in parts]),
            torch.cat([p.sparse for p in parts]))


def test_criteo_dense_transform_labels_and_missing(tmp_path: Path) -> None:
    dense = ["5", "", "-3", "0", "100"] + ["1"] * 8
    path = write(tmp_path / "c.txt", [criteo_line("0", dense), criteo_line("1")])
    data, stats = read_criteo(path, splits=(1.0, 0.0, 0.0))
    labels, x, _ = all_rows(data)
    assert labels.tolist() == [0.0, 1.0]
    expected = [math.log1p(5), 0.0, 0.0, 0.0, math.log1p(100)]
    assert torch.allclose(x[0, :5], torch.tensor(expected))
    assert data.schema.num_dense == 13 and data.schema.num_sparse == 26
    assert (stats.lines, stats.rows, stats.malformed) == (2, 2, 0)


def test_criteo_min_count_vocabulary(tmp_path: Path) -> None:
    cats = lambda first: [first] + [""] * 25  # noqa: E731
    tokens = ["aa"] * 3 + ["bb"] * 2 + ["cc"] + [""]
    path = write(tmp_path / "c.txt", [criteo_line("1", cats=cats(t)) for t in tokens])
    data, _ = read_criteo(path, min_count=2, splits=(1.0, 0.0, 0.0))
    _, _, sparse = all_rows(data)
    # Most frequent first; 'cc' is rare and '' is missing: both row 0.
    assert sparse[:, 0].tolist() == [1, 1, 1, 2, 2, 0, 0]
    assert data.schema.cardinalities[0] == 3
    assert data.schema.cardinalities[1] == 1  # an all-missing field keeps only row 0
    capped, _ = read_criteo(path, max_rows_per_field=2, splits=(1.0, 0.0, 0.0))
    assert all_rows(capped)[2][:, 0].tolist() == [1, 1, 1, 0, 0, 0, 0]


def test_criteo_hashing_is_stable_and_bounded(tmp_path: Path) -> None:
    cats = [f"{i:08x}" for i in range(25)] + [""]
    path = write(tmp_path / "c.txt", [criteo_line("1", cats=cats)] * 3)
    data, _ = read_criteo(path, hash_buckets=50, splits=(1.0, 0.0, 0.0))
    _, _, sparse = all_rows(data)
    assert data.schema.cardinalities == (50,) * 26
    expected = [zlib.crc32(t.encode()) % 49 + 1 for t in cats[:25]]
    assert sparse[0, :25].tolist() == expected
    assert sparse[0, 25] == 0  # missing
    assert ((sparse >= 0) & (sparse < 50)).all()
    capped, _ = read_criteo(path, hash_buckets=50, max_rows_per_field=8)
    assert capped.schema.cardinalities == (8,) * 26
    assert stable_hash(["x", "", "x"], 8).tolist()[1] == 0


def test_hash_and_min_count_cannot_mix(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", [criteo_line()])
    with pytest.raises(DataError, match="not both"):
        read_criteo(path, hash_buckets=10, min_count=3)


def test_criteo_contiguous_split_and_max_rows(tmp_path: Path) -> None:
    lines = [criteo_line("1", [str(i)] + ["0"] * 12) for i in range(10)]
    path = write(tmp_path / "c.txt", lines)
    data, stats = read_criteo(path, splits=(0.6, 0.2, 0.2))
    assert (len(data.train), len(data.valid), len(data.test)) == (6, 2, 2)
    firsts = torch.cat([data.train.dense[:, 0], data.valid.dense[:, 0], data.test.dense[:, 0]])
    assert torch.allclose(firsts, torch.log1p(torch.arange(10.0)))  # file order kept
    data, stats = read_criteo(path, max_rows=4)
    assert stats.lines == 4 and len(data.train) + len(data.valid) + len(data.test) == 4


def test_criteo_gzip(tmp_path: Path) -> None:
    path = tmp_path / "c.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write(criteo_line() + "\n" + criteo_line("0") + "\n")
    _data, stats = read_criteo(path, hash_buckets=16)
    assert stats.rows == 2


@pytest.mark.parametrize("bad, reason", [
    ("1\t2\t3", "expected 40 tab-separated columns"),
    (criteo_line("x"), "label must be 0 or 1"),
    (criteo_line("1", ["1.5"] + ["0"] * 12), "I1 must be an integer"),
    (criteo_line("1", ["0"] * 12 + ["abc"]), "I13 must be an integer"),
])
def test_criteo_malformed_line_names_file_and_line(tmp_path: Path, bad: str, reason: str) -> None:
    path = write(tmp_path / "c.txt", [criteo_line(), criteo_line(), bad, criteo_line()])
    with pytest.raises(DataError, match=reason) as err:
        read_criteo(path)
    assert err.value.where == f"{path}:3"
    assert "skip_malformed" in str(err.value)
    _data, stats = read_criteo(path, skip_malformed=True, hash_buckets=8)
    assert (stats.lines, stats.rows, stats.malformed) == (4, 3, 1)
    assert stats.examples[0].startswith(f"{path}:3: ")
    assert "skipped 1 malformed" in stats.summary()


def test_criteo_blank_lines_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", [criteo_line(), "", criteo_line()])
    _, stats = read_criteo(path)
    assert (stats.lines, stats.rows, stats.blank) == (3, 2, 1)


def test_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_criteo(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="no valid criteo rows"):
        read_criteo(write(tmp_path / "c.txt", []))
    with pytest.raises(DataError, match="empty file"):
        read_avazu(write(tmp_path / "a.csv", []))


_TOKEN = st.text(alphabet="0123456789abcx-. \t\u00e9\u0663", max_size=6)
_GARBAGE = st.lists(_TOKEN, min_size=1, max_size=42).map("\t".join)


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    """A valid Criteo line with one column replaced by a random token."""
    cols = criteo_line().split("\t")
    cols[draw(st.integers(0, len(cols) - 1))] = draw(_TOKEN)
    return "\t".join(cols)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(_GARBAGE, _mutated()), max_size=6),
       good=st.integers(0, 3), hashing=st.booleans())
def test_garbage_lines_only_ever_raise_data_error(tmp_path: Path, lines: list[str], good: int,
                                                   hashing: bool) -> None:
    path = write(tmp_path / "fuzz.txt", [criteo_line()] * good + lines)
    kwargs = {"hash_buckets": 32} if hashing else {}
    try:
        read_criteo(path, **kwargs)
    except DataError as err:
        assert str(path) in err.where
    try:
        data, stats = read_criteo(path, skip_malformed=True, **kwargs)
    except DataError as err:
        assert "no valid criteo rows" in str(err)
        return
    assert stats.rows + stats.malformed + stats.blank == stats.lines == good + len(lines)
    assert stats.rows == len(data.train) + len(data.valid) + len(data.test)


def avazu_row(i: int, click: str = "1", hour: str = "14102100", site: str = "s1") -> str:
    cats = ["1005", "0", site, "dom", "cat", "app", "adom", "acat", "dev", "ip", "model", "1",
            "2", "15706", "320", "50", "1722", "0", "35", "-1", "79"]
    return ",".join([str(i), click, hour, *cats])


def test_avazu_hour_features_and_fields(tmp_path: Path) -> None:
    # 2014-10-21 was a Tuesday (weekday 1); 2014-10-26 a Sunday (6).
    lines = [AVAZU_HEADER, avazu_row(0, "1", "14102100"), avazu_row(1, "0", "14102623", "s2")]
    data, stats = read_avazu(write(tmp_path / "a.csv", lines), splits=(1.0, 0.0, 0.0))
    labels, dense, sparse = all_rows(data)
    assert labels.tolist() == [1.0, 0.0]
    assert torch.allclose(dense, torch.tensor([[0.0, 1 / 6], [1.0, 1.0]]))
    assert data.schema.num_dense == 2 and data.schema.num_sparse == 23
    assert sparse[0, 2] != sparse[1, 2]  # site_id differs
    assert sparse[:, -2].tolist() == [1, 2] or sparse[:, -2].tolist() == [2, 1]  # hour of day
    assert stats.rows == 2


def test_hour_features_vectorised() -> None:
    hours = np.array(["16022923", "15022900", "1410210", "14133100", "14103124", "19123100"])
    hour, weekday, valid = hour_features(hours)
    assert valid.tolist() == [True, False, False, False, False, True]
    assert hour[0] == 23 and weekday[0] == 0  # 2016-02-29 was a Monday
    assert weekday[5] == 1  # 2019-12-31 was a Tuesday


def test_avazu_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="lacks column") as err:
        read_avazu(write(tmp_path / "a.csv", ["id,hour,C1", "1,14102100,5"]))
    assert err.value.where.endswith("a.csv:1")
    bad = write(tmp_path / "b.csv", [AVAZU_HEADER, avazu_row(0), avazu_row(1, hour="14139900")])
    with pytest.raises(DataError, match="hour must be YYMMDDHH") as err:
        read_avazu(bad)
    assert err.value.where == f"{bad}:3"
    short = write(tmp_path / "c.csv", [AVAZU_HEADER, avazu_row(0), "1,0,14102100"])
    with pytest.raises(DataError, match="expected 24") as err:
        read_avazu(short)
    assert err.value.where == f"{short}:3"
    _data, stats = read_avazu(short, skip_malformed=True, min_count=1)
    assert stats.malformed == 1 and stats.rows == 1


def test_avazu_hashing_and_min_count_agree_on_shape(tmp_path: Path) -> None:
    lines = [AVAZU_HEADER] + [avazu_row(i, str(i % 2), site=f"s{i % 3}") for i in range(12)]
    path = write(tmp_path / "a.csv", lines)
    hashed, _ = read_avazu(path, hash_buckets=64)
    counted, _ = read_avazu(path, min_count=5)
    assert hashed.schema.cardinalities == (64,) * 23
    assert counted.schema.cardinalities[2] == 1  # each site seen 4 times < 5: all row 0
    assert torch.equal(hashed.train.labels, counted.train.labels)
