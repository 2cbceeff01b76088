"""Fetching MovieLens-100k from the RecBole wheel: extraction, sha check, cache, errors."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from ranknas.errors import DataError
from ranknas.evaluator.data import fetch as fetch_module
from ranknas.evaluator.data import load_movielens
from ranknas.evaluator.data.fetch import (
    ML100K_PREFIX,
    default_cache_dir,
    extract_members,
    fetch_dataset,
    fetch_movielens_100k,
)

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t5\t881250949\n"


def make_wheel(path: Path, extra: dict[str, str] | None = None) -> tuple[Path, str]:
    """A fake RecBole wheel: the ml-100k members plus others that must not be extracted."""
    members = {
        "recbole/__init__.py": "",
        "recbole/dataset_example/ml-1m/ml-1m.inter": "not extracted",
        f"{ML100K_PREFIX}ml-100k.inter": INTER,
        f"{ML100K_PREFIX}ml-100k.user": "user_id:token\tage:token\n1\t20\n",
        f"{ML100K_PREFIX}ml-100k.item": "item_id:token\trelease_year:token\n2\t1995\n",
        **(extra or {}),
    }
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


class FakeDownload:
    """Stands in for pip: copies a prepared wheel into the download folder, counts calls."""

    def __init__(self, wheel: Path) -> None:
        self.wheel, self.calls = wheel, 0

    def __call__(self, dest: Path) -> Path:
        self.calls += 1
        return Path(shutil.copy(self.wheel, dest / self.wheel.name))


def test_extracts_only_the_ml100k_members_and_caches(tmp_path: Path) -> None:
    wheel, sha = make_wheel(tmp_path / "recbole.whl")
    download = FakeDownload(wheel)
    cache = tmp_path / "cache"
    folder = fetch_movielens_100k(cache, download=download, expected_sha256=sha)
    assert folder == cache / "movielens-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["ml-100k.inter", "ml-100k.item",
                                                        "ml-100k.user"]
    assert (folder / "ml-100k.inter").read_text() == INTER
    assert sorted(p.name for p in cache.iterdir()) == ["movielens-100k"]  # temp dir cleaned
    # Cached: no second download, unless forced.
    assert fetch_movielens_100k(cache, download=download, expected_sha256=sha) == folder
    assert download.calls == 1
    fetch_movielens_100k(cache, download=download, expected_sha256=sha, force=True)
    assert download.calls == 2
    assert len(load_movielens(folder).train) == 1


def test_sha_mismatch_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    wheel, _ = make_wheel(tmp_path / "recbole.whl")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="sha256") as err:
        fetch_movielens_100k(cache, download=FakeDownload(wheel), expected_sha256="0" * 64)
    assert "grouplens.org" in str(err.value)
    assert not (cache / "movielens-100k").exists()


@pytest.mark.parametrize("bad", [f"{ML100K_PREFIX}../../../evil.txt",
                                 f"{ML100K_PREFIX}sub/../../x", f"{ML100K_PREFIX}deep/file"])
def test_unsafe_member_paths_are_refused(tmp_path: Path, bad: str) -> None:
    wheel, sha = make_wheel(tmp_path / "recbole.whl", {bad: "x"})
    with pytest.raises(DataError, match=r"refusing|nested"):
        fetch_movielens_100k(tmp_path / "cache", download=FakeDownload(wheel),
                             expected_sha256=sha)
    assert not (tmp_path / "evil.txt").exists()


def test_extract_members_rejects_a_non_zip(tmp_path: Path) -> None:
    junk = tmp_path / "x.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        extract_members(junk, ML100K_PREFIX, tmp_path / "out")


def test_pip_failure_explains_the_manual_route(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def failing_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(fetch_module.subprocess, "run", failing_run)
    with pytest.raises(DataError, match="No matching distribution") as err:
        fetch_movielens_100k(tmp_path / "cache")
    assert "movielens:PATH" in str(err.value) and "grouplens.org" in str(err.value)
    assert seen[0][1:4] == ["-m", "pip", "download"] and "recbole==1.2.1" in seen[0]
    assert "--no-deps" in seen[0]


def test_cache_dir_and_named_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKNAS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RANKNAS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "ranknas"
    with pytest.raises(DataError, match="known: movielens-100k"):
        fetch_dataset("criteo")
    wheel, sha = make_wheel(tmp_path / "recbole.whl")
    monkeypatch.setitem(fetch_module.FETCHERS, "movielens-100k",
                        lambda cache, force=False: fetch_movielens_100k(
                            cache, force=force, download=FakeDownload(wheel),
                            expected_sha256=sha))
    assert fetch_module.main(["movielens-100k", "--cache", str(tmp_path / "c2")]) == 0
    assert (tmp_path / "c2" / "movielens-100k" / "ml-100k.inter").is_file()


@pytest.mark.skipif(os.environ.get("RANKNAS_NETWORK_TESTS") != "1",
                    reason="network test: set RANKNAS_NETWORK_TESTS=1")
def test_real_fetch_from_pypi(tmp_path: Path) -> None:
    folder = fetch_movielens_100k(tmp_path)
    assert {"ml-100k.inter", "ml-100k.user", "ml-100k.item"} <= {p.name for p in folder.iterdir()}
    data = load_movielens(folder)
    assert len(data.train) + len(data.valid) + len(data.test) == 100_000
    assert data.schema.cardinalities[:2] == (944, 1683)
