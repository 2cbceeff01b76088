"""Built-in search spaces, by name."""

from __future__ import annotations

from collections.abc import Callable

from ranknas.errors import SpaceError
from ranknas.spaces.builtin.dlrm import dlrm
from ranknas.spaces.builtin.nasrec import nasrec_full, nasrec_small
from ranknas.spaces.builtin.rankitect import rankitect
from ranknas.spaces.space import SearchSpace

BUILTIN_SPACES: dict[str, Callable[[], SearchSpace]] = {
    "dlrm": dlrm,
    "nasrec_small": nasrec_small,
    "nasrec_full": nasrec_full,
    "rankitect": rankitect,
}


def builtin_space(name: str) -> SearchSpace:
    try:
        return BUILTIN_SPACES[name]()
    except KeyError:
        raise SpaceError("space", f"unknown space {name!r} (built in: "
                         f"{', '.join(BUILTIN_SPACES)}; or give a .yaml file)") from None
