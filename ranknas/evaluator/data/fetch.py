"""Fetch public datasets into the local cache (``ranknas data fetch NAME``).

MovieLens-100k ships inside the RecBole wheel (``recbole/dataset_example/ml-100k/``) as RecBole
atomic files. :func:`fetch_movielens_100k` downloads that wheel with pip, checks its sha256
against a pinned value, and extracts only those members into ``CACHE/movielens-100k/``.

The data's license (GroupLens) forbids redistribution: it is fetched by each user into their
cache and never added to this repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ranknas.errors import DataError

RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
# sha256 of recbole-1.2.1-py3-none-any.whl as served by PyPI (2,130,151 bytes).
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_PREFIX = "recbole/dataset_example/ml-100k/"
ML100K_DIR = "movielens-100k"
_MANUAL = ("Download ml-100k.zip by hand from https://grouplens.org/datasets/movielens/100k/, "
           "unzip it and pass --data movielens:PATH/ml-100k (the folder holding u.data)")


def default_cache_dir() -> Path:
    """``$RANKNAS_CACHE`` if set, else ``~/.cache/ranknas``."""
    env = os.environ.get("RANKNAS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ranknas"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_recbole_wheel(dest: Path) -> Path:
    """Download the pinned RecBole wheel (no dependencies, wheel only) into ``dest`` with pip."""
    cmd = [sys.executable, "-m", "pip", "download", f"recbole=={RECBOLE_VERSION}", "--no-deps",
           "--only-binary", ":all:", "--disable-pip-version-check", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError("movielens-100k", f"could not run pip ({exc}). {_MANUAL}") from exc
    wheel = dest / RECBOLE_WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataError("movielens-100k", f"'pip download recbole=={RECBOLE_VERSION}' failed: "
                                          f"{' | '.join(tail) or 'no output'}. {_MANUAL}")
    return wheel


def extract_members(wheel: Path, prefix: str, target: Path) -> list[Path]:
    """Extract the files directly under ``prefix`` of the zip ``wheel`` into ``target``.

    Nothing else in the archive is touched. A member whose name holds ``..``, is absolute or
    nests deeper is refused, so the archive cannot write outside ``target``.

    Returns:
        The extracted files.
    """
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(str(wheel), f"not a readable zip/wheel: {exc}") from exc
    with archive:
        members = [m for m in archive.infolist() if m.filename.startswith(prefix)]
        for m in members:
            parts = PurePosixPath(m.filename).parts
            if ".." in parts or m.filename.startswith("/") or "\\" in m.filename:
                raise DataError(f"{wheel}:{m.filename}", "refusing a member path with '..', "
                                                         "a backslash or a leading '/'")
        files = [m for m in members if not m.is_dir()]
        nested = [m.filename for m in files if "/" in m.filename[len(prefix):]]
        if nested:
            raise DataError(f"{wheel}:{nested[0]}", f"unexpected nested member under {prefix}")
        if not files:
            raise DataError(str(wheel), f"no members under {prefix}")
        target.mkdir(parents=True, exist_ok=True)
        out = []
        for m in files:
            dest = target / m.filename[len(prefix):]
            with archive.open(m) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out.append(dest)
    return out


def fetch_movielens_100k(cache_dir: str | Path | None = None, *, force: bool = False,
                         download: Callable[[Path], Path] = download_recbole_wheel,
                         expected_sha256: str = RECBOLE_WHEEL_SHA256) -> Path:
    """Fetch MovieLens-100k (RecBole atomic files) into ``CACHE/movielens-100k`` once.

    Args:
        cache_dir: The cache root (default :func:`default_cache_dir`).
        force: Download again even if the folder exists.
        download: Puts the wheel in the given folder and returns its path (tests replace it).
        expected_sha256: The wheel's pinned sha256.

    Returns:
        The folder holding ``ml-100k.inter``, ``ml-100k.user``, ``ml-100k.item``, ...
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / ML100K_DIR
    if (target / "ml-100k.inter").is_file() and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ranknas-fetch-", dir=root) as tmp:
        wheel = download(Path(tmp))
        actual = sha256_of(wheel)
        if actual != expected_sha256:
            raise DataError(str(wheel), f"sha256 {actual} does not match the pinned "
                                        f"{expected_sha256}; the download is corrupt or was "
                                        f"tampered with. {_MANUAL}")
        # Extract beside the target, then swap in: a failed run never leaves half a dataset.
        staging = Path(tmp) / ML100K_DIR
        extract_members(wheel, ML100K_PREFIX, staging)
        if not (staging / "ml-100k.inter").is_file():
            raise DataError(str(wheel), f"{ML100K_PREFIX}ml-100k.inter is missing. {_MANUAL}")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), str(target))
    return target


FETCHERS: dict[str, Callable[..., Path]] = {"movielens-100k": fetch_movielens_100k}


def fetch_dataset(name: str, cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """What ``ranknas data fetch NAME`` runs: fetch a named dataset and return its folder."""
    if name not in FETCHERS:
        raise DataError(name, f"unknown dataset to fetch; known: {', '.join(sorted(FETCHERS))}")
    return FETCHERS[name](cache_dir, force=force)


def main(argv: list[str] | None = None) -> int:
    """``python -m ranknas.evaluator.data.fetch NAME [--cache DIR] [--force]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="ranknas data fetch", description=__doc__)
    parser.add_argument("name", choices=sorted(FETCHERS))
    parser.add_argument("--cache", default=None, help="cache root (default $RANKNAS_CACHE or "
                                                      "~/.cache/ranknas)")
    parser.add_argument("--force", action="store_true", help="download again")
    args = parser.parse_args(argv)
    try:
        path = fetch_dataset(args.name, args.cache, force=args.force)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
