"""Rebuild exported models without pickle, and rebuild a study's data from its config.

An export folder (``EXPORT/<arch_id>/``, see :mod:`ranknas.reports.export`) holds ``arch.json``,
``model.json`` (space, data schema, seed, metrics) and ``weights.safetensors``. :func:`load`
rebuilds the space (built-in by name, or from the YAML text embedded in ``model.json``), the
architecture and a fresh model, then fills it from safetensors: no ``torch.load``, no pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ranknas.errors import ConfigError

MODEL_FORMAT = "ranknas-model"
MODEL_FORMAT_VERSION = 1

__all__ = ["load", "load_config_data", "read_json", "space_from_spec"]


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; errors name the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(str(path), f"cannot read {what}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}", f"malformed JSON in {what}: {err.msg}") from None


def space_from_spec(space: Any, base_dir: str | Path | None = None) -> tuple[Any, str | None]:
    """A search space from a config's ``space`` value, and its YAML text when it is a file.

    Args:
        space: A built-in name, a ``.yaml`` path (tried as given, then relative to
            ``base_dir``), or ``{"name", "yaml"}`` as written into ``model.json``.
        base_dir: Folder to resolve a relative YAML path against (the study folder).

    Returns:
        ``(SearchSpace, yaml_text or None)``.
    """
    import yaml

    from ranknas.spaces import load_space, space_from_dict

    if isinstance(space, Mapping):
        if space.get("yaml"):
            text = str(space["yaml"])
            return space_from_dict(yaml.safe_load(text), f"{space.get('name', 'space')}.yaml"), \
                text
        space = space.get("name")
    if not isinstance(space, str) or not space:
        raise ConfigError("space", f"expected a space name or YAML path, got {space!r}")
    if space.endswith((".yaml", ".yml")) or Path(space).is_file():
        path = Path(space)
        if not path.is_file() and base_dir is not None and (Path(base_dir) / path).is_file():
            path = Path(base_dir) / path
        return load_space(path), path.read_text() if path.is_file() else None
    return load_space(space), None


def load_config_data(data: Any, *, seed: int = 0, device: str = "cpu") -> Any:
    """The :class:`CTRData` a study's config describes.

    Accepted forms: ``"synthetic"``/``"criteo:PATH"``; ``{"spec": ..., "rows": N, "seed": S}``
    (``name`` works for ``spec``, a ``path`` is appended as ``spec:path``); further keys of a
    synthetic spec go to ``make_synthetic`` (``cardinalities``, ``num_dense``, ...).

    Args:
        data: The config's ``data`` value.
        seed: Used when ``data`` has no seed (the experiment seed).
        device: Where synthetic rows are generated and kept.
    """
    from ranknas.evaluator.data.synthetic import make_synthetic

    if isinstance(data, str):
        data = {"spec": data}
    if not isinstance(data, Mapping):
        raise ConfigError("data", f"expected a spec string or a mapping, got {data!r}")
    opts = dict(data)
    spec = opts.pop("spec", None) or opts.pop("name", None)
    opts.pop("name", None)
    if not isinstance(spec, str) or not spec:
        raise ConfigError("data.spec", "missing: synthetic | criteo:PATH | avazu:PATH | "
                          "movielens:PATH")
    path = opts.pop("path", None)
    if path is not None and ":" not in spec:
        spec = f"{spec}:{path}"
    rows = opts.pop("rows", None)
    seed = int(opts.pop("seed", seed))
    try:
        from ranknas.evaluator.data import load_data  # type: ignore[attr-defined]
    except ImportError:  # the generic loader is optional; synthetic works without it
        load_data = None
    if spec == "synthetic" and (opts or load_data is None):
        return make_synthetic(200_000 if rows is None else int(rows), seed, device=device,
                              **opts)
    if load_data is None:
        raise ConfigError("data", f"cannot load {spec!r}: this ranknas has no data loader "
                          "for it; use synthetic")
    if opts:
        raise ConfigError(f"data.{sorted(opts)[0]}", f"unknown option for {spec!r}")
    kwargs = {"seed": seed} if rows is None else {"rows": int(rows), "seed": seed}
    return load_data(spec, **kwargs).to(device)


def _model_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name == "model.json":
        path = path.parent
    if not (path / "model.json").is_file():
        raise ConfigError(str(path), "not an exported model folder (no model.json); give "
                          "EXPORT/<arch_id> as written by `ranknas export`")
    return path


def load(path: str | Path) -> Any:
    """Rebuild an exported model (``RankingModel``, eval mode, on CPU) without pickle.

    Args:
        path: An export folder ``EXPORT/<arch_id>`` (or its ``model.json``).

    Raises:
        ConfigError: a file is missing or malformed, the space version or the architecture id
            does not match what was exported, or the weights do not fit the model.
    """
    from safetensors.torch import load_file

    from ranknas.evaluator.data.schema import DataSchema
    from ranknas.spaces import build_model

    folder = _model_dir(path)
    card = read_json(folder / "model.json", "model.json")
    if card.get("format") != MODEL_FORMAT or int(card.get("format_version", 0)) > \
            MODEL_FORMAT_VERSION:
        raise ConfigError(str(folder / "model.json"), f"not a {MODEL_FORMAT} v"
                          f"{MODEL_FORMAT_VERSION} file; upgrade ranknas to load it")
    space, _ = space_from_spec(card["space"])
    version = str(card["space"].get("version", space.version))
    if version != space.version:
        raise ConfigError("model.json.space.version", f"exported with {space.name} v{version} "
                          f"but this ranknas has v{space.version}; architectures differ")
    arch = space.from_json(read_json(folder / "arch.json", "arch.json"), where="arch.json")
    if card.get("arch_id") and arch.arch_id != card["arch_id"]:
        raise ConfigError("arch.json", f"arch_id {arch.arch_id} does not match model.json's "
                          f"{card['arch_id']}")
    schema = DataSchema.from_json(card["schema"])
    model = build_model(space, arch, schema, seed=int(card.get("seed", 0)))
    weights = folder / card.get("files", {}).get("weights", "weights.safetensors")
    if not weights.is_file():
        raise ConfigError(str(weights), "missing weights file")
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as err:
        raise ConfigError(str(weights), f"weights do not fit the rebuilt model: "
                          f"{str(err).splitlines()[0]}") from None
    return model.eval()
