"""Search spaces: decisions, operator graphs, architectures, the op catalogue and models."""

from __future__ import annotations

from pathlib import Path

from ranknas.spaces.architecture import Architecture
from ranknas.spaces.builtin import BUILTIN_SPACES, builtin_space
from ranknas.spaces.choices import Categorical, Choice, Subset
from ranknas.spaces.graph import AnyOf, Block, Fixed, OneOf, OperatorGraph, WidthTie
from ranknas.spaces.materialized import MaterializedGraph, MaterializedNode
from ranknas.spaces.model import RankingModel, build_model
from ranknas.spaces.space import SearchSpace
from ranknas.spaces.yaml_space import load_space_yaml, space_from_dict


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A built-in space by name, or a user space from a ``.yaml``/``.yml`` file."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_space_yaml(text)
    return builtin_space(text)


__all__ = [
    "BUILTIN_SPACES",
    "AnyOf",
    "Architecture",
    "Block",
    "Categorical",
    "Choice",
    "Fixed",
    "MaterializedGraph",
    "MaterializedNode",
    "OneOf",
    "OperatorGraph",
    "RankingModel",
    "SearchSpace",
    "Subset",
    "WidthTie",
    "build_model",
    "load_space",
    "load_space_yaml",
    "space_from_dict",
]
