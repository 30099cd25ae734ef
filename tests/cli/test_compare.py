"""`mpvgbench compare KEY KEY...`: config diff, final numbers, overlaid curves (PNG, HTML)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from mpvgbench.store import Store

from .conftest import fabricate_run, invoke, micro_config

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def keys(tmp_path: Path) -> list[str]:
    """default lr 1e-3 (top-1 50), mpvg lr 1e-3 (60), mpvg lr 5e-4 (62); 3 epochs each."""
    with Store(tmp_path / "results.db") as store:
        return [fabricate_run(store, tmp_path / "runs", micro_config(0, method, epochs=3, lr=lr), top1=top1)
                for method, lr, top1 in (("default", 1e-3, 50.0), ("mpvg", 1e-3, 60.0), ("mpvg", 5e-4, 62.0))]


def test_compare_config_diff_and_numbers(keys: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    res = invoke("compare", keys[1][:8], keys[2][:8], "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    diff = {row["field"]: row for row in doc["config"]["rows"]}
    assert set(diff) == {"recipe.lr"}  # same method and seed: only the lr differs
    assert (diff["recipe.lr"][keys[1][:8]], diff["recipe.lr"][keys[2][:8]]) == ("0.001", "0.0005")
    numbers = {row["field"]: row for row in doc["numbers"]["rows"]}
    assert (numbers["final_top1"][keys[1][:8]], numbers["final_top1"][keys[2][:8]]) == ("60", "62")
    assert numbers["method"][keys[1][:8]] == "mpvg"

    res = invoke("compare", *keys, "--format", "markdown")
    assert res.exit_code == 0, res.output
    assert "| method | default | mpvg | mpvg |" in res.output and "| recipe.lr | 0.001 | 0.001 | 0.0005 |" in res.output

    monkeypatch.setenv("COLUMNS", "80")
    res = invoke("compare", *keys)
    assert res.exit_code == 0, res.output
    assert max(map(len, res.output.splitlines())) <= 80 and "…" not in res.output


def test_compare_curves_png_and_html(tmp_path: Path, keys: list[str]) -> None:
    res = invoke("compare", *keys, "-o", tmp_path / "c.png")
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "c.png") as image:
        assert image.format == "PNG" and image.width > 600
    res = invoke("compare", *keys, "--format", "html", "-o", tmp_path / "c.html")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "c.html").read_text(encoding="utf-8")
    assert "Config: the fields that differ" in text and "recipe.lr" in text and str(tmp_path) not in text
    (image,) = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert base64.b64decode(image).startswith(PNG)


def test_compare_figure_lines_apart(tmp_path: Path, keys: list[str]) -> None:
    from mpvgbench.report_compare import compare_figure

    with Store(tmp_path / "results.db") as store:
        fig = compare_figure(store, keys)
    top1 = fig.axes[0]
    assert len(top1.lines) == 3
    styles = {(line.get_linestyle(), line.get_marker()) for line in top1.lines}
    assert len(styles) == 3  # two mpvg runs still told apart without colour


@pytest.mark.parametrize("args, message", [
    (["only"], "compare needs two or more runs"),
    (["zzzz", "yyyy"], "no run with key 'zzzz'"),
    (["--format", "html"], "pass -o compare.html"),
])
def test_compare_errors(keys: list[str], args: list[str], message: str) -> None:
    argv = [*args, keys[0], keys[1]] if args == ["--format", "html"] else args
    res = invoke("compare", *argv)
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
