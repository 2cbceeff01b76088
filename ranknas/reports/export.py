"""Export a study's Pareto-optimal models (NE vs FLOPs) as standalone PyTorch models.

Each front member is retrained from scratch with the study's training settings on the study's
data (the budget can be changed), scored on the validation split, and written to
``EXPORT/<arch_id>/``:

* ``arch.json``: the architecture;
* ``weights.safetensors``: the ``state_dict`` (no pickle);
* ``program.pt2``: a ``torch.export`` program with a dynamic batch dimension (when the model
  exports; otherwise the card says why);
* ``model.json``: space (name and version, or the YAML text of a user space), data schema and
  spec, seed, train config, validation metrics measured right after training, FLOPs, params
  and the command to reproduce; :func:`ranknas.load` reads it;
* ``MODEL_CARD.md``: the same for humans.
"""

from __future__ import annotations

import json
import platform
import shlex
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ranknas.errors import ConfigError
from ranknas.evaluator.results import Objective
from ranknas.execution.journal import Journal, TrialRecord
from ranknas.reports.loading import (
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    load_config_data,
    read_json,
    space_from_spec,
)
from ranknas.reports.pareto import pareto_front

#: The front that is exported: NE against FLOPs, both minimised.
EXPORT_OBJECTIVES = (Objective.named("ne"), Objective.named("flops"))

__all__ = ["EXPORT_OBJECTIVES", "export_front", "export_model", "train_config_from"]


def train_config_from(config: Mapping[str, Any], *, train_examples: int | None = None,
                      device: str | None = None) -> Any:
    """The study's :class:`TrainConfig` (seeded with the study seed), with overrides."""
    from ranknas.evaluator.training import TrainConfig

    raw = dict(config.get("train") or {})
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"train.{unknown[0]}", f"unknown TrainConfig field (known: "
                          f"{', '.join(sorted(known))})")
    raw["seed"] = int(config.get("seed", raw.get("seed", 0)))
    if train_examples is not None:
        if isinstance(train_examples, bool) or int(train_examples) < 1:
            raise ConfigError("--train-examples", f"must be >= 1, got {train_examples!r}")
        raw.update(examples=int(train_examples), steps=None)
    if device is not None:
        raw["device"] = device
    if raw.get("steps") is None and raw.get("examples") is None:
        raw["examples"] = 100_000
    return TrainConfig(**raw)


def _export_program(model: Any, dense: Any, sparse: Any, path: Path) -> dict[str, Any]:
    """``torch.export`` the model (dynamic batch first, then static) and check it."""
    import torch

    attempts = []
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    for dynamic in (True, False):
        try:
            shapes = ({0: batch}, {0: batch}) if dynamic else None
            program = torch.export.export(model, (dense, sparse), dynamic_shapes=shapes)
            with warnings.catch_warnings():  # torch's note on aliased weights; harmless here
                warnings.filterwarnings("ignore", message="No complete tensor found")
                torch.export.save(program, str(path))
            with torch.no_grad():
                diff = (program.module()(dense, sparse) - model(dense, sparse)).abs().max()
            return {"ok": True, "file": path.name, "dynamic_batch": dynamic,
                    "max_abs_diff": float(diff), "notes": attempts}
        except Exception as err:  # export failures are reported in the card, not raised
            line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            attempts.append(f"{'dynamic' if dynamic else 'static'} batch: "
                            f"{type(err).__name__}: {line[:300]}")
    path.unlink(missing_ok=True)
    return {"ok": False, "file": None, "error": "; ".join(attempts)}


def export_model(record: TrialRecord, config: Mapping[str, Any], space: Any,
                 space_yaml: str | None, data: Any, train_config: Any, folder: Path,
                 command: str) -> Path:
    """Retrain one architecture from scratch, score it and write its export folder."""
    import torch
    from safetensors.torch import save_file

    import ranknas
    from ranknas.evaluator.training import evaluate, train
    from ranknas.spaces import build_model

    arch = space.from_json(record.arch, where=f"trials.jsonl:{record.run}/{record.trial_id}")
    seed = int(train_config.seed)
    model = build_model(space, arch, data.schema, seed=seed)
    trained = train(model, data, train_config)
    model = model.to("cpu").eval()  # scored as saved, so ranknas.load reproduces it exactly
    metrics = evaluate(model, data.valid.to("cpu"), data.background_ctr,
                       batch_size=train_config.eval_batch_size)
    graph = space.materialize(arch, data.schema)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "arch.json").write_text(json.dumps(arch.to_json(), indent=1, sort_keys=True))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"))
    sample = data.valid if len(data.valid) else data.train
    n = min(8, len(sample))
    program = _export_program(model, sample.dense[:n].cpu(), sample.sparse[:n].cpu(),
                              folder / "program.pt2")
    card = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
        "arch_id": arch.arch_id,
        "space": {"name": space.name, "version": space.version, "yaml": space_yaml},
        "schema": data.schema.to_json(), "data": config.get("data"), "seed": seed,
        "train": asdict(train_config),
        "training": {"examples": trained.examples, "steps": trained.steps,
                     "seconds": trained.seconds, "final_loss": trained.final_loss},
        "metrics": {"valid": {k: float(v) for k, v in metrics.items()},
                    "search": dict(record.result.metrics)},
        "flops": graph.flops, "params": graph.params, "dense_params": graph.dense_params,
        "found_by": {"run": record.run, "strategy": record.strategy,
                     "trial_id": record.trial_id, "examples_total": record.examples_total},
        "files": {"arch": "arch.json", "weights": "weights.safetensors",
                  "program": program["file"], "card": "MODEL_CARD.md"},
        "export": program,
        "reproduce": command,
        "versions": {"ranknas": ranknas.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    (folder / "model.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (folder / "MODEL_CARD.md").write_text(model_card(card))
    return folder


def model_card(card: Mapping[str, Any]) -> str:
    """The human-readable card of an exported model."""
    valid, search = card["metrics"]["valid"], card["metrics"]["search"]
    found = card["found_by"]
    prog = card["export"]
    if prog["ok"]:
        program = (f"`{prog['file']}` (torch.export, "
                   f"{'dynamic' if prog['dynamic_batch'] else 'static'} batch; max |diff| vs "
                   f"eager {prog['max_abs_diff']:.2e})")
    else:
        program = f"not written: torch.export failed ({prog['error']})"
    space = card["space"]
    space_text = f"{space['name']} v{space['version']}" + (
        " (user YAML, embedded in model.json)" if space.get("yaml") else " (built-in)")
    train = card["train"]
    budget = (f"{train['examples']:,} examples" if train.get("examples")
              else f"{train['steps']:,} steps")
    lines = [
        f"# Model card: {space['name']} {card['arch_id']}", "",
        f"A Pareto-optimal (NE vs FLOPs) CTR ranking model found by `{found['strategy']}` "
        f"(run `{found['run']}`, trial {found['trial_id']}) and retrained from scratch.", "",
        "## Metrics (validation split, right after training)", "",
        "| metric | value | during search |", "|---|---|---|",
        *(f"| {k} | {valid[k]:.6g} | "
          f"{'' if k not in search else format(search[k], '.6g')} |"
          for k in ("ne", "logloss", "auc", "calibration") if k in valid),
        f"| FLOPs / example | {card['flops']:,} | |",
        f"| parameters | {card['params']:,} ({card['dense_params']:,} dense) | |", "",
        "NE is normalized entropy (log loss over the entropy of the training click rate; "
        "lower is better, 1.0 = the constant predictor).", "",
        "## Provenance", "",
        f"- space: {space_text}",
        f"- data: `{json.dumps(card['data'])}`; schema {card['schema']['num_dense']} dense, "
        f"{len(card['schema']['cardinalities'])} sparse fields",
        f"- seed: {card['seed']}",
        f"- training: {budget}, batch {train['batch_size']}, {train['optimizer']} lr "
        f"{train['lr']}, {card['training']['seconds']:.1f} s on {train['device']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in card['versions'].items())}", "",
        "## Files", "",
        "- `arch.json`: the architecture", "- `weights.safetensors`: state_dict (safetensors)",
        f"- program: {program}",
        "- `model.json`: everything above, machine-readable", "",
        "## Use", "",
        "```python", "import ranknas", "", "model = ranknas.load(\"PATH/TO/THIS/FOLDER\")",
        "logits = model(dense, sparse)  # dense [B, D] float32, sparse [B, F] int64", "```", "",
        "## Reproduce", "", "```sh", card["reproduce"], "```", "",
    ]
    return "\n".join(lines)


def export_front(out_dir: str | Path, export_dir: str | Path, *,
                 train_examples: int | None = None, device: str = "cpu") -> list[Path]:
    """Retrain and export every member of the study's NE-vs-FLOPs Pareto front.

    Args:
        out_dir: The study folder (``config.json``, ``trials.jsonl``).
        export_dir: Where ``<arch_id>/`` folders are written.
        train_examples: Training budget per model; ``None`` = the study's per-trial budget.
        device: Training device; weights and programs are saved for CPU.

    Returns:
        The export folders, in front order (best NE first).

    Raises:
        ConfigError: no config or no ok trial with NE and FLOPs.
    """
    out_dir, export_dir = Path(out_dir), Path(export_dir)
    config = read_json(out_dir / "config.json", "the study config")
    records = Journal(out_dir / "trials.jsonl").records()
    front = pareto_front(records, EXPORT_OBJECTIVES)
    if not front:
        raise ConfigError(str(out_dir), "no successful trial with NE and FLOPs to export; "
                          "run a search first (ranknas search CONFIG --out DIR)")
    space, space_yaml = space_from_spec(config.get("space"), out_dir)
    train_config = train_config_from(config, train_examples=train_examples, device=device)
    data = load_config_data(config.get("data", "synthetic"), seed=int(config.get("seed", 0)),
                            device="cpu")
    command = ["ranknas", "export", str(out_dir), "--out", str(export_dir)]
    if train_examples is not None:
        command += ["--train-examples", str(train_examples)]
    if device != "cpu":
        command += ["--device", device]
    command_text = shlex.join(command)
    return [export_model(rec, config, space, space_yaml, data, train_config,
                         export_dir / rec.result.arch_id, command_text) for rec in front]
