"""The study report: one self-contained HTML file (PNGs inlined as data URIs) plus the PNGs.

``write_report(OUT)`` reads ``OUT/config.json``, ``OUT/trials.jsonl`` and ``OUT/baseline.json``
and writes ``OUT/report/``: ``report.html``, ``pareto.png`` (NE vs FLOPs of every ok trial by
strategy run, the study's Pareto front as a step line, the baseline starred), ``anytime.png``
(per run: best NE and hypervolume against training examples processed) and ``front.json``.
The hypervolume reference point follows :mod:`ranknas.reports.pareto` (NE 1.0, FLOPs 1.1 x the
largest evaluated) unless the config fixes it under ``report.reference``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ranknas.errors import ConfigError
from ranknas.evaluator.results import Objective, Status
from ranknas.execution.journal import Journal, TrialRecord
from ranknas.reports.loading import read_json
from ranknas.reports.pareto import (
    AnytimeCurve,
    anytime_curves,
    as_objectives,
    pareto_front,
    reference_point,
)

#: What the report plots and ranks: NE against FLOPs.
REPORT_OBJECTIVES = (Objective.named("ne"), Objective.named("flops"))

__all__ = ["REPORT_OBJECTIVES", "load_baseline", "write_report"]

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}code{background:#f5f5f5;padding:0 .2em}
img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:.9em}"""


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("report", "matplotlib is not installed: pip install matplotlib") \
            from None
    return Figure, FigureCanvasAgg


def load_baseline(baseline: Mapping[str, Any] | str | Path | None,
                  out_dir: Path) -> dict[str, Any] | None:
    """``{name, arch_id, metrics, status, reason}`` of the baseline, or None.

    Args:
        baseline: ``{arch, result}`` (as in ``baseline.json``), a path to such a file, or None
            for ``OUT/baseline.json`` when it exists.
        out_dir: The study folder.
    """
    if baseline is None:
        path = out_dir / "baseline.json"
        if not path.exists():
            return None
        baseline = path
    if isinstance(baseline, str | Path):
        baseline = read_json(baseline, "baseline")
    if not isinstance(baseline, Mapping) or not isinstance(baseline.get("result"), Mapping):
        raise ConfigError("baseline", "expected {arch, result} as written to baseline.json")
    result = baseline["result"]
    return {"name": str(baseline.get("name") or result.get("arch_id", "baseline")),
            "arch_id": str(result.get("arch_id", "")),
            "metrics": {k: float(v) for k, v in dict(result.get("metrics", {})).items()},
            "status": str(result.get("status", "ok")), "reason": str(result.get("reason", ""))}


def _png(fig: Any, canvas_cls: Any, path: Path) -> str:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    path.write_bytes(buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode()


def _colors(runs: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {run: cmap(i % 10) for i, run in enumerate(runs)}


def _label(o: Objective) -> str:
    return {"ne": "NE (lower is better)", "flops": "FLOPs / example",
            "params": "parameters", "auc": "AUC"}.get(o.name, o.name)


def _scatter(records: list[TrialRecord], front: list[TrialRecord], objs: Sequence[Objective],
             baseline: dict | None, colors: dict[str, Any], path: Path) -> str:
    figure, canvas = _matplotlib()
    fig = figure(figsize=(8, 5.2))
    ax = fig.add_subplot()
    y_o, x_o = objs[0], objs[1]
    xs_all = []
    for run, color in colors.items():
        pts = [r.result.values(objs) for r in records if r.run == run]
        pts = [p for p in pts if p is not None]
        if pts:
            xs_all += [p[1] for p in pts]
            ax.scatter([p[1] for p in pts], [p[0] for p in pts], s=18, alpha=0.6,
                       color=color, label=f"{run} ({len(pts)} ok)")
    if front:
        pts = sorted((r.result.metrics[x_o.name], r.result.metrics[y_o.name]) for r in front)
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="black", lw=1.2,
                label=f"Pareto front ({len(front)})")
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=46, facecolors="none",
                   edgecolors="black", lw=1.2, zorder=3)
    if baseline and y_o.name in baseline["metrics"] and x_o.name in baseline["metrics"]:
        bx, by = baseline["metrics"][x_o.name], baseline["metrics"][y_o.name]
        xs_all.append(bx)
        ax.scatter([bx], [by], marker="*", s=220, color="red", edgecolors="black", zorder=4,
                   label=f"baseline {baseline['name']}")
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(_label(x_o))
    ax.set_ylabel(_label(y_o))
    ax.set_title(f"{y_o.name} vs {x_o.name}: every ok trial")
    ax.grid(alpha=0.3)
    if xs_all:
        ax.legend(fontsize=8)
    return _png(fig, canvas, path)


def _anytime(curves: dict[str, AnytimeCurve], objs: Sequence[Objective], baseline: dict | None,
             colors: dict[str, Any], path: Path) -> str:
    figure, canvas = _matplotlib()
    fig = figure(figsize=(11, 4.2))
    ax_best, ax_hv = fig.subplots(1, 2)
    for run, c in curves.items():
        x = c.examples if c.examples.max(initial=0) > 0 else range(1, len(c.best) + 1)
        ax_best.step(x, c.best, where="post", color=colors[run], label=run)
        ax_hv.step(x, c.hypervolume, where="post", color=colors[run], label=run)
    if baseline and objs[0].name in baseline["metrics"]:
        ax_best.axhline(baseline["metrics"][objs[0].name], color="red", ls="--", lw=1,
                        label=f"baseline {baseline['name']}")
    xlabel = "training examples processed (per run)"
    ax_best.set(xlabel=xlabel, ylabel=f"best {objs[0].name} so far",
                title=f"anytime best {objs[0].name}")
    ax_hv.set(xlabel=xlabel, ylabel="hypervolume", title="anytime hypervolume "
              f"({' x '.join(o.name for o in objs)})")
    for ax in (ax_best, ax_hv):
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
    return _png(fig, canvas, path)


def _fmt(value: float | None, spec: str = ".5f") -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return format(value, spec)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1,
           cls: str = "") -> str:
    def cell(tag: str, i: int, text: str) -> str:
        return f"<{tag}{' class=l' if i < left else ''}>{text}</{tag}>"

    head = "".join(cell("th", i, html.escape(h)) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _front_rows(front: list[TrialRecord], objs: Sequence[Objective],
                baseline: dict | None) -> tuple[list[list[str]], list[dict]]:
    base_ne = (baseline or {}).get("metrics", {}).get("ne")
    rows, items = [], []
    for r in sorted(front, key=lambda r: r.result.metrics.get(objs[1].name, 0.0)):
        m = r.result.metrics
        ne = m.get("ne")
        delta = (ne - base_ne) / base_ne * 100 if ne is not None and base_ne else None
        items.append({"arch_id": r.result.arch_id, "run": r.run, "strategy": r.strategy,
                      "trial_id": r.trial_id, "metrics": dict(m), "delta_ne_pct": delta,
                      "examples": r.result.examples, "examples_total": r.examples_total,
                      "arch": r.arch})
        rows.append([f"<code>{html.escape(r.result.arch_id)}</code>", html.escape(r.run),
                     html.escape(r.strategy), _fmt(ne), _fmt(delta, "+.3f"),
                     _fmt(m.get("flops"), ",.0f"), _fmt(m.get("params"), ",.0f"),
                     f"{r.result.examples:,}", f"{r.examples_total:,}"])
    return rows, items


def _run_rows(records: list[TrialRecord], curves: dict[str, AnytimeCurve]) -> list[list[str]]:
    rows = []
    for run, c in curves.items():
        recs = [r for r in records if r.run == run]
        counts = Counter(r.result.status for r in recs)
        rows.append([html.escape(run), html.escape(c.strategy), str(len(recs)),
                     *(str(counts.get(s, 0)) for s in Status),
                     _fmt(float(c.best[-1]) if len(c.best) else None),
                     _fmt(float(c.hypervolume[-1]) if len(c.hypervolume) else None, ".4g"),
                     f"{int(c.examples.max(initial=0)):,}",
                     f"{float(c.seconds.max(initial=0)):.1f}"])
    return rows


def _failure_rows(records: list[TrialRecord]) -> list[list[str]]:
    """Failed/infeasible/pruned trials grouped by status, run and reason (numbers -> N)."""
    groups: Counter = Counter()
    example: dict[tuple, str] = {}
    for r in records:
        if r.result.ok:
            continue
        reason = r.result.reason or "(no reason given)"
        key = (r.result.status.value, r.run, re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", reason)[:200])
        groups[key] += 1
        example.setdefault(key, reason)
    return [[html.escape(s), html.escape(run), html.escape(example[(s, run, k)][:300]), str(n)]
            for (s, run, k), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))]


def write_report(out_dir: str | Path, *,
                 baseline: Mapping[str, Any] | str | Path | None = None,
                 objectives: Sequence[Objective | str | Mapping] | None = None) -> Path:
    """Write ``OUT/report/report.html`` (self-contained) and its PNGs; return the HTML path.

    Args:
        out_dir: The study folder (``config.json``, ``trials.jsonl``, ``baseline.json``).
        baseline: ``{arch, result}`` or a path to such JSON; default ``OUT/baseline.json``.
        objectives: Two objectives to plot and rank, primary first; default NE vs FLOPs.
    """
    out_dir = Path(out_dir)
    config_path = out_dir / "config.json"
    config = read_json(config_path, "the study config") if config_path.exists() else {}
    records = Journal(out_dir / "trials.jsonl").records()
    objs = as_objectives(objectives or REPORT_OBJECTIVES)
    if len(objs) != 2:
        raise ConfigError("objectives", f"the report plots two objectives, got {len(objs)}")
    base = load_baseline(baseline, out_dir)
    fixed = dict((config.get("report") or {}).get("reference") or {})
    fixed = {k: v for k, v in fixed.items() if k in {o.name for o in objs}}
    has_values = any(r.result.values(objs) is not None for r in records)
    ref = reference_point(records, objs, fixed=fixed) if has_values else None
    front = pareto_front(records, objs)
    curves = anytime_curves(records, objs, ref) if ref is not None else {}
    runs = list(dict.fromkeys(r.run for r in records))
    colors = _colors(runs)

    folder = out_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    scatter = _scatter(records, front, objs, base, colors, folder / "pareto.png")
    anytime = _anytime(curves, objs, base, colors, folder / "anytime.png")
    front_rows, front_items = _front_rows(front, objs, base)
    (folder / "front.json").write_text(json.dumps(
        {"objectives": [{"name": o.name, "direction": o.direction} for o in objs],
         "reference": ref, "baseline": base, "front": front_items}, indent=1) + "\n")

    title = f"ranknas study {config.get('name', out_dir.name)}"
    counts = Counter(r.result.status.value for r in records)
    ref_text = ("none (no ok trial yet)" if ref is None else
                ", ".join(f"{o.name} = {v:.6g}" for o, v in zip(objs, ref, strict=True)))
    base_text = "none (no baseline.json)" if base is None else (
        f"<b>{html.escape(base['name'])}</b> (<code>{html.escape(base['arch_id'])}</code>): "
        f"NE {_fmt(base['metrics'].get('ne'))}, FLOPs {_fmt(base['metrics'].get('flops'), ',.0f')}"
        + ("" if base["status"] == "ok" else f" — {html.escape(base['status'])}: "
           f"{html.escape(base['reason'])}"))
    failures = _failure_rows(records)
    if front and not any(c.hypervolume.max(initial=0) > 0 for c in curves.values()):
        ref_text += (". <b>Every hypervolume is 0</b>: no ok trial is better than the "
                     "reference in all objectives (e.g. NE ≥ 1.0, no better than the constant "
                     "predictor: train longer)")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>space <code>{html.escape(str(config.get('space', '?')))}</code>, data "
        f"<code>{html.escape(json.dumps(config.get('data')))}</code>, seed "
        f"{html.escape(str(config.get('seed', '?')))}. {len(records)} trials in {len(runs)} "
        f"runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".</p>",
        f"<p>Baseline: {base_text}.</p>",
        f"<h2>{objs[0].name} vs {objs[1].name}</h2>",
        f"<img alt='pareto scatter' src='data:image/png;base64,{scatter}'>",
        "<h2>Pareto front</h2>"
        "<p class=note>Non-dominated ok trials of all runs together, one per architecture; "
        "ΔNE% = (NE − NE<sub>baseline</sub>) / NE<sub>baseline</sub> × 100 (negative is "
        "better). <i>trial examples</i>: what training it cost; <i>found after</i>: its run's "
        "cumulative examples when it finished.</p>",
        _table(["arch_id", "run", "strategy", "NE", "ΔNE %", "FLOPs", "params",
                "trial examples", "found after"], front_rows, left=3, cls="front")
        if front_rows else "<p>No successful trial yet.</p>",
        "<h2>Anytime performance</h2>",
        f"<img alt='anytime curves' src='data:image/png;base64,{anytime}'>",
        f"<p class=note>Hypervolume reference point: {ref_text}. NE's reference is 1.0, the "
        "constant predictor; other coordinates are 1.1 × the worst value over every trial of "
        "the study unless fixed in the config (report.reference). Hypervolumes compare within "
        "this study; across studies only with a fixed reference.</p>",
        _table(["run", "strategy", "trials", *(s.value for s in Status), "best NE",
                "hypervolume", "examples", "seconds"], _run_rows(records, curves), left=2),
        "<h2>Failed, infeasible and pruned trials</h2>",
        _table(["status", "run", "reason (example)", "count"], failures, left=3)
        if failures else "<p>None.</p>",
        "<h2>Config</h2><details><summary>config.json</summary><pre>"
        f"{html.escape(json.dumps(config, indent=1, sort_keys=True))}</pre></details>",
        "</body></html>\n",
    ]
    path = folder / "report.html"
    path.write_text("\n".join(parts))
    return path
