"""load_data: every spec scheme, option checking and unknown specs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ranknas.errors import DataError
from ranknas.evaluator.data import KNOWN_SPECS, CTRData, load_data, make_synthetic

CRITEO = "\t".join(["1", *["3"] * 13, *["a1b2c3d4"] * 26])
AVAZU_HEADER = "id,click,hour,C1,banner_pos,site_id"
INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "1\t10\t5\t881250949\n2\t10\t2\t881250950\n1\t20\t4\t881250951\n")


def total(data: CTRData) -> int:
    return len(data.train) + len(data.valid) + len(data.test)


def test_synthetic_spec_matches_make_synthetic() -> None:
    data = load_data("synthetic", rows=600, seed=3, num_dense=4, cardinalities=[5, 50])
    ref = make_synthetic(600, 3, num_dense=4, cardinalities=[5, 50])
    assert torch.equal(data.train.sparse, ref.train.sparse)
    assert data.schema.num_dense == 4 and total(data) == 600
    assert load_data("synthetic", rows=300, num_pairs=0).schema.num_sparse == 26


def test_file_specs(tmp_path: Path) -> None:
    criteo = tmp_path / "train.txt"
    criteo.write_text((CRITEO + "\n") * 10)
    data = load_data(f"criteo:{criteo}", hash_buckets=16)
    assert total(data) == 10 and data.schema.cardinalities == (16,) * 26
    assert total(load_data(f"criteo:{criteo}", rows=4)) == 4
    assert total(load_data(f"criteo:{criteo}", rows=None)) == 10

    avazu = tmp_path / "train.csv"
    avazu.write_text(AVAZU_HEADER + "\n" + "".join(f"{i},{i % 2},14102100,1005,0,s{i}\n"
                                                    for i in range(5)))
    data = load_data(f"avazu:{avazu}", min_count=1)
    assert total(data) == 5 and data.schema.num_sparse == 5 and data.schema.num_dense == 2

    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ml-100k.inter").write_text(INTER)
    data = load_data(f"movielens:{folder}", seed=1)
    assert total(data) == 3 and data.schema.num_sparse == 8


def test_movielens_100k_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKNAS_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="ranknas data fetch movielens-100k"):
        load_data("movielens-100k")
    (tmp_path / "movielens-100k").mkdir()
    (tmp_path / "movielens-100k" / "ml-100k.inter").write_text(INTER)
    assert total(load_data("movielens-100k")) == 3


def test_skipped_lines_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    criteo = tmp_path / "train.txt"
    criteo.write_text(CRITEO + "\nbroken\n" + CRITEO + "\n")
    with caplog.at_level(logging.WARNING):
        data = load_data(f"criteo:{criteo}", skip_malformed=True)
    assert total(data) == 2
    assert "skipped 1 malformed" in caplog.text


@pytest.mark.parametrize("spec, match", [
    ("parquet:/x", "unknown data spec"),
    ("criteo:", "missing path"),
    ("synthetic:/x", "takes no path"),
    ("", "give a data spec"),
])
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        load_data(spec)
    if "unknown" in match:
        assert all(known in str(err.value) for known in KNOWN_SPECS)


def test_unknown_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_data("synthetic", rows=10, hash_buckets=3)
    assert err.value.where == "synthetic.hash_buckets"
    criteo = tmp_path / "t.txt"
    criteo.write_text(CRITEO + "\n")
    with pytest.raises(DataError, match=r"accepted: .*hash_buckets") as err:
        load_data(f"criteo:{criteo}", buckets=3)
    assert err.value.where == "criteo.buckets"
    with pytest.raises(DataError, match="rows >= 1"):
        load_data("synthetic", rows=None)
