import base64
import json
import re

import pytest

from ranknas.errors import ConfigError
from ranknas.reports.pareto import pareto_front
from ranknas.reports.report import write_report


def test_report_is_self_contained_with_front_table(study, records):
    path = write_report(study)
    assert path == study / "report" / "report.html"
    text = path.read_text()
    # Embedded images that decode to PNG, and the same PNGs beside the HTML.
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 2
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    for name in ("pareto.png", "anytime.png"):
        assert (study / "report" / name).read_bytes()[:4] == b"\x89PNG"
    assert "src='http" not in text and "<script" not in text  # nothing fetched
    # The front table lists every front member with its ΔNE% against the 0.9 baseline.
    front = pareto_front(records, ["ne", "flops"])
    table = text[text.index("<table class='front'>"):]
    table = table[:table.index("</table>")]
    for rec in front:
        assert rec.result.arch_id in table
        delta = (rec.result.metrics["ne"] - 0.9) / 0.9 * 100
        assert f"{delta:+.3f}" in table
    assert "dlrm-tiny" in text
    # Failure counts with reasons.
    assert "training diverged at step 1: loss is nan" in text
    assert "flops 1e9 &gt; max_flops 1e6" in text
    saved = json.loads((study / "report" / "front.json").read_text())
    assert [f["arch_id"] for f in saved["front"]] == sorted(
        (r.result.arch_id for r in front),
        key=lambda a: next(r.result.metrics["flops"] for r in front if r.result.arch_id == a))
    assert saved["reference"][0] == 1.0


def test_report_with_fixed_reference_and_no_baseline(tmp_path, records, helpers):
    config = helpers.study_config(report={"reference": {"flops": 1e9}})
    out = helpers.write_study(tmp_path / "out", records, config)
    text = write_report(out).read_text()
    assert "flops = 1e+09" in text
    assert "none (no baseline.json)" in text


def test_report_of_an_empty_study(tmp_path, helpers):
    out = helpers.write_study(tmp_path / "out", [])
    text = write_report(out).read_text()
    assert "No successful trial yet" in text


def test_bad_baseline(study):
    with pytest.raises(ConfigError, match="baseline"):
        write_report(study, baseline={"arch": {}})
