"""`report --format html` and `report --curves` through CliRunner, with their option errors."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from PIL import Image

from mpvgbench.store import Store

from .conftest import fabricate_run, invoke, jobs_of, micro_config, write_spec

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """./results.db with vit_micro on digits: default 50/52 and mpvg 60/64, 3 epochs each."""
    with Store(tmp_path / "results.db") as store:
        for method, tops in {"default": [50.0, 52.0], "mpvg": [60.0, 64.0]}.items():
            for seed, top1 in enumerate(tops):
                fabricate_run(store, tmp_path / "runs", micro_config(seed, method, epochs=3), top1=top1,
                              spec_name="pivot")
    return tmp_path / "results.db"


def test_report_html_writes_one_self_contained_page(tmp_path: Path, stored: Path) -> None:
    folder = tmp_path / "analysis" / "somekey"
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 3), "red").save(folder / "heatmaps.png")
    res = invoke("report", "--format", "html", "--analysis", tmp_path / "analysis", "-o", "report.html")
    assert res.exit_code == 0, res.output
    assert "wrote report.html" in res.output
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text and "http" not in text
    assert "<th scope=\"col\">mpvg</th>" in text and "62.00 ± 2.83 (n=2)" in text
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 2  # the curves and the analysis PNG
    assert all(base64.b64decode(data).startswith(PNG) for data in images)


def test_report_html_one_table_with_provenance_and_no_paths(tmp_path: Path) -> None:
    """Any --table; each measured cell links to its recipe, config, commit and environment; the
    page names the database by its name only and holds no absolute path."""
    spec = write_spec(tmp_path / "pivot.yaml", name="pivot", methods=["default", "mpvg"], seeds=[0, 1],
                      recipe={"epochs": 3})
    tops = {("default", 0): 50.0, ("default", 1): 52.0, ("mpvg", 0): 60.0, ("mpvg", 1): 64.0}
    with Store(tmp_path / "results.db") as store:
        for job in jobs_of(spec):
            fabricate_run(store, tmp_path / "runs", job.config, top1=tops[(job.method_label, job.seed)],
                          spec_name="pivot")
    res = invoke("report", spec, "--format", "html", "--table", "1", "--db", tmp_path / "results.db",
                 "-o", "one.html")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "one.html").read_text(encoding="utf-8")
    assert "Table 1: top-1 accuracy on ImageNet-1K" in text and "Table 2" not in text
    assert str(tmp_path) not in text and "database results.db" in text
    res = invoke("report", spec, "--format", "html", "--baseline", "default", "-o", "pivot.html")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "pivot.html").read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a href="#(cfg-[0-9a-f]+-digits)"', text))
    assert len(anchors) == 2  # default and mpvg: one configuration each
    for anchor in anchors:
        block = text.split(f'id="{anchor}"', 1)[1].split('<div class="prov"', 1)[0]
        for needed in ("recipe", "epochs", "lr", "commit", "torch", "timm", "device", "full config"):
            assert needed in block, (anchor, needed)
    assert "+11.00 [" in text and "paired t-test" in text  # mpvg - default: (10, 12)
    assert str(tmp_path) not in text


def test_report_curves_writes_a_png(tmp_path: Path, stored: Path) -> None:
    res = invoke("report", "--curves", "-o", tmp_path / "curves.png")
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width > 600


@pytest.mark.parametrize("args, message", [
    (["--format", "html"], "--format html writes a file; pass -o report.html"),
    (["--curves"], "--curves writes a file; pass -o curves.png"),
    (["--curves", "--format", "csv", "-o", "x.png"], "--curves draws the selected runs' curves"),
    (["--analysis", "."], "--analysis only applies to --format html"),
    (["--format", "html", "--analysis", "nowhere", "-o", "r.html"], "--analysis nowhere: no such folder"),
    (["--format", "html", "--set", "seeds=[0]", "-o", "r.html"], "pass the SPEC they apply to"),
])
def test_report_html_and_curves_option_errors(tmp_path: Path, stored: Path, args: list[str], message: str) -> None:
    before = stored.stat().st_mtime_ns
    res = invoke("report", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "x.png").exists()
    assert stored.stat().st_mtime_ns == before


def test_report_curves_without_runs_is_a_user_error(tmp_path: Path) -> None:
    Store(tmp_path / "results.db").close()
    res = invoke("report", "--curves", "-o", "c.png")
    assert res.exit_code == 2 and "no finished run with per-epoch metrics" in res.output
    assert not (tmp_path / "c.png").exists()
