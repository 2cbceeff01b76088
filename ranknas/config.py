"""Experiment configuration: frozen dataclasses loaded from YAML/JSON with dotted overrides.

Every field is validated before anything runs; an error names the key path and what is
allowed, e.g. ``strategies[1].name: unknown strategy 'evo' (known: random, evolution, optuna)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ranknas.errors import ConfigError
from ranknas.evaluator.results import KNOWN_OBJECTIVES, Objective
from ranknas.evaluator.training import TrainConfig

_TOP = ("space", "data", "objectives", "baseline", "strategies", "budget", "train", "seed",
        "tracking", "executor", "constraints", "dedupe", "name", "report")


@dataclass(frozen=True)
class StrategySpec:
    """One strategy run: a registry name, a unique label and its options."""

    name: str
    label: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole study: one space and data, several strategies on equal budgets.

    Attributes:
        name: Study name (the MLflow experiment).
        space: Built-in space name or a YAML file path.
        data: ``{"spec": "synthetic" | "criteo:PATH" | ..., "rows": N, "seed": S, **options}``;
            options go to the reader (``load_data``), which names any it does not know.
        objectives: What to optimise; the first is primary.
        strategies: Strategy runs, each on the same ``budget``.
        budget: ``{"trials": N, "examples": M}`` per strategy run (whichever ends first).
        train: :class:`TrainConfig` fields for every trial (``examples`` is the per-trial budget).
        baseline: Architecture JSON path, ``random:SEED`` or None; reported as ΔNE%.
        constraints: ``{"max_flops", "min_flops", "max_params"}`` checked before training.
        dedupe: Replay cached results of re-proposed architectures.
        seed: Seeds strategies, data, model initialisation and batch order.
        tracking: ``{"uri": None | "http://..."}``; None = local store under the output folder.
            ``{"enabled": false}`` records nothing in MLflow (trials.jsonl and the report
            still hold every result).
        executor: ``{"name": "local"}`` or ``{"name": "ray", "workers": N, "address": ...}``.
        report: ``{"reference": {"ne": 1.0, "flops": 5e6}}`` fixes the hypervolume reference
            point (default: NE 1.0 and the worst FLOPs seen, +10%).
    """

    space: str
    strategies: tuple[StrategySpec, ...]
    budget: Mapping[str, int]
    name: str = "ranknas"
    data: Mapping[str, Any] = field(default_factory=lambda: {"spec": "synthetic",
                                                             "rows": 200_000, "seed": 0})
    objectives: tuple[Objective, ...] = (Objective.named("ne"), Objective.named("flops"))
    train: Mapping[str, Any] = field(default_factory=lambda: {"examples": 100_000})
    baseline: str | None = None
    constraints: Mapping[str, float] = field(default_factory=dict)
    dedupe: bool = True
    seed: int = 0
    tracking: Mapping[str, Any] = field(default_factory=lambda: {"uri": None})
    executor: Mapping[str, Any] = field(default_factory=lambda: {"name": "local"})
    report: Mapping[str, Any] = field(default_factory=dict)

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{**self.train, "seed": self.seed})

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["objectives"] = [{"name": o.name, "direction": o.direction}
                             for o in self.objectives]
        out["strategies"] = [{"name": s.name, "label": s.label, **s.options}
                             for s in self.strategies]
        return json.loads(json.dumps(out))


def _mapping(value: Any, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"expected a mapping with keys {', '.join(allowed)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown key (allowed: {', '.join(allowed)})")
    return dict(value)


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(where, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _objectives(raw: Any) -> tuple[Objective, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("objectives", "expected a list like [{name: ne}, {name: flops}]")
    out = []
    for i, item in enumerate(raw):
        item = {"name": item} if isinstance(item, str) else item
        spec = _mapping(item, f"objectives[{i}]", ("name", "direction"))
        if spec.get("name") not in KNOWN_OBJECTIVES:
            raise ConfigError(f"objectives[{i}].name", f"unknown objective {spec.get('name')!r}"
                              f" (known: {', '.join(KNOWN_OBJECTIVES)})")
        try:
            out.append(Objective.named(spec["name"], spec.get("direction")))
        except ConfigError as err:
            raise ConfigError(f"objectives[{i}].direction", err.message) from None
    if len({o.name for o in out}) != len(out):
        raise ConfigError("objectives", "each objective may appear once")
    return tuple(out)


def _strategies(raw: Any) -> tuple[StrategySpec, ...]:
    from ranknas.strategies.registry import known_names

    if not isinstance(raw, list) or not raw:
        raise ConfigError("strategies", "expected a list like [{name: random}, "
                          "{name: evolution, population: 32}]")
    known = known_names()
    out: list[StrategySpec] = []
    for i, item in enumerate(raw):
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, Mapping) or "name" not in item:
            raise ConfigError(f"strategies[{i}]", "expected {name: ..., <options>}")
        options = {k: v for k, v in item.items() if k not in ("name", "label")}
        name = item["name"]
        if name not in known:
            raise ConfigError(f"strategies[{i}].name", f"unknown strategy {name!r} "
                              f"(known: {', '.join(sorted(known))})")
        label = str(item.get("label") or (name if name != "optuna" else
                                          str(options.get("sampler", "optuna"))))
        taken = {s.label for s in out}
        base, k = label, 2
        while label in taken:
            label, k = f"{base}-{k}", k + 1
        out.append(StrategySpec(name, label, options))
    return tuple(out)


def config_from_dict(doc: Any) -> ExperimentConfig:
    """Validate a parsed config document (see ``examples/experiment.yaml``)."""
    if not isinstance(doc, Mapping):
        raise ConfigError("config", "expected a mapping of top-level keys")
    doc = _mapping(doc, "config", _TOP)
    for key in ("space", "strategies", "budget"):
        if key not in doc:
            raise ConfigError(key, "missing (required: space, strategies, budget)")
    if not isinstance(doc["space"], str):
        raise ConfigError("space", "expected a built-in space name or a .yaml path")
    data = _mapping(doc.get("data", {}), "data",
                    ("name", "spec", "rows", "seed", "path", "options"))
    spec = data.pop("spec", None) or data.pop("name", "synthetic")
    if "path" in data:
        spec = f"{spec}:{data.pop('path')}"
    options = data.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError("data.options", "expected a mapping of reader options")
    data = {"spec": spec, "rows": _int(data.get("rows", 200_000), "data.rows", 1),
            "seed": _int(data.get("seed", doc.get("seed", 0)), "data.seed"), **options}
    budget = _mapping(doc["budget"], "budget", ("trials", "examples"))
    if not budget:
        raise ConfigError("budget", "set trials and/or examples (per strategy)")
    budget = {k: _int(v, f"budget.{k}", 1) for k, v in budget.items()}
    train = _mapping(doc.get("train", {}), "train",
                     [f.name for f in fields(TrainConfig) if f.name != "seed"])
    if "steps" not in train and "examples" not in train:
        train["examples"] = 100_000
    try:
        TrainConfig(**train)
    except ConfigError as err:
        raise ConfigError(f"train.{err.where}", err.message) from None
    except TypeError as err:
        raise ConfigError("train", str(err)) from None
    constraints = _mapping(doc.get("constraints", {}), "constraints",
                           ("max_flops", "min_flops", "max_params"))
    for k, v in constraints.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"constraints.{k}", f"expected a positive number, got {v!r}")
    tracking = _mapping(doc.get("tracking", {}), "tracking", ("uri", "enabled"))
    uri = tracking.get("uri")
    if uri is not None and not isinstance(uri, str):
        raise ConfigError("tracking.uri", "expected null (local store) or a URI string")
    enabled = tracking.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("tracking.enabled", f"expected true or false, got {enabled!r}")
    executor = _mapping(doc.get("executor", {"name": "local"}), "executor",
                        ("name", "workers", "address", "cpus_per_trial", "gpus_per_trial"))
    if executor.get("name", "local") not in ("local", "ray"):
        raise ConfigError("executor.name", f"unknown executor {executor.get('name')!r} "
                          "(known: local, ray)")
    executor.setdefault("name", "local")
    if "workers" in executor:
        _int(executor["workers"], "executor.workers", 1)
    dedupe = doc.get("dedupe", True)
    if not isinstance(dedupe, bool):
        raise ConfigError("dedupe", f"expected true or false, got {dedupe!r}")
    baseline = doc.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise ConfigError("baseline", "expected an architecture JSON path or random:SEED")
    report = _mapping(doc.get("report", {}), "report", ("reference",))
    reference = _mapping(report.get("reference", {}), "report.reference",
                         tuple(o.name for o in _objectives(doc.get("objectives", ["ne", "flops"]))))
    for k, v in reference.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"report.reference.{k}", f"expected a number, got {v!r}")
    return ExperimentConfig(
        space=doc["space"], strategies=_strategies(doc["strategies"]), budget=budget,
        name=str(doc.get("name", "ranknas")), data=data,
        objectives=_objectives(doc.get("objectives", ["ne", "flops"])), train=train,
        baseline=baseline, constraints=constraints, dedupe=dedupe,
        seed=_int(doc.get("seed", 0), "seed"),
        tracking={"uri": uri, **({} if enabled else {"enabled": False})}, executor=executor,
        report=report)


def _set_dotted(doc: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = doc
    for part in parts[:-1]:
        if part.isdigit() and isinstance(node, list):
            node = node[int(part)]
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(dotted, f"{part!r} is not a mapping")
    last = parts[-1]
    if isinstance(node, list) and last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read YAML/JSON, apply ``key.sub=value`` overrides (values parsed as YAML), validate."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(str(path), f"cannot read config: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}" if mark else path.name
        raise ConfigError(where, f"malformed YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(path.name, "expected a mapping of top-level keys")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "overrides look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(doc, key, yaml.safe_load(raw))
    try:
        return config_from_dict(doc)
    except ConfigError as err:
        raise ConfigError(f"{path.name}: {err.where}", err.message) from None
