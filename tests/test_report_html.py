"""The HTML report: its content as a string, and as a real headless Chromium renders it."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mpvgbench.curves import figure_png
from mpvgbench.report_html import MAX_FIGURES, build_html, measured_tables, png_data_uri
from mpvgbench.store import Store
from tests.test_curves import fill

PNG = b"\x89PNG\r\n\x1a\n"
MPVG_DEIT = "73.50 ± 0.50 (n=3)"  # fill(): DeiT-Ti MPVG finals 73.0, 73.5, 74.0


class _Page(HTMLParser):
    """Table headers, cell texts and image sources of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.cells: list[str] = []
        self.captions: list[str] = []
        self.images: list[str] = []
        self._into: list[str] | None = None
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        target = {"th": self.headers, "td": self.cells, "caption": self.captions}.get(tag)
        if target is not None:  # text of tags inside a cell (a provenance link) is the cell's
            self._into = target
            self._into.append("")
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag in ("script", "link") or (tag in ("img", "iframe") and not (values.get("src") or "").startswith("data:")):
            self.external.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td", "caption"):
            self._into = None

    def handle_data(self, data: str) -> None:
        if self._into is not None:
            self._into[-1] += data


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def decoded_pngs(page: _Page) -> list[bytes]:
    out = []
    for src in page.images:
        match = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=]+)", src)
        assert match, f"image not an inline PNG: {src[:60]}"
        out.append(base64.b64decode(match.group(1)))
    return out


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "results.db") as store:
        fill(store, tmp_path / "runs")
        yield store


def analysis_dir(store: Store, root: Path) -> Path:
    """What `mpvgbench analyze --out root` leaves: correlation numbers in the store, per-run PNGs
    (heatmaps of the DeiT-Ti mpvg and default seed-0 runs)."""
    import matplotlib.pyplot as plt

    deit = {r.method_label: r.key for r in store.runs(status="finished") if r.seed == 0 and r.model == "deit_tiny"}
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    png = figure_png(fig)
    for method in ("mpvg", "default"):
        (root / deit[method]).mkdir(parents=True)
        (root / deit[method] / "heatmaps.png").write_bytes(png)
    (root / "correlation.png").write_bytes(PNG + b"old figure labelled by hash")
    (root / "notes.png").write_bytes(b"not a png")  # skipped, not embedded
    store.add_analysis(deit["mpvg"], {"pe_correlation": [0.5, 0.25], "pe_correlation_note": None,
                                      "pe_figures": {"heatmaps": str(root / deit["mpvg"] / "heatmaps.png")}})
    return root


def test_tables_are_the_measured_report_tables(filled: Store) -> None:
    tables = measured_tables(filled)
    titles = [t.title for t in tables]
    assert titles[0].startswith("All finished runs")
    # Table 1 (DeiT-Ti), 2 (ViT-Lite on CIFAR-100), 5 and 6 and Fig. 5 share the DeiT-Ti runs;
    # 3 and 4 (downstream) have no measured value and are left out
    assert any(t.startswith("Table 1") for t in titles) and any(t.startswith("Table 2") for t in titles)
    assert not any(t.startswith(("Table 3", "Table 4")) for t in titles)


def test_page_holds_tables_curves_and_analysis(filled: Store, tmp_path: Path) -> None:
    folder = analysis_dir(filled, tmp_path / "analysis")
    text = build_html(filled, analysis_dirs=[folder])
    page = parse(text)
    assert page.external == []  # no script, no stylesheet link, no remote image
    assert "Final Top-1 (%) measured" in page.headers and "Δ" in page.headers
    assert MPVG_DEIT in page.cells and "-0.01" in page.cells  # Table 1: 73.50 - 73.51
    assert any(c.startswith("Table 1") for c in page.captions)
    pngs = decoded_pngs(page)
    assert all(p.startswith(PNG) for p in pngs)
    # curves, correlation by method, the two per-run heatmaps (mpvg's once, though both the
    # store and the folder name it), not the old correlation.png, not the file that is no PNG
    assert len(pngs) == 4
    assert 'alt="training curves"' in text and 'alt="correlation by method"' in text
    # figures grouped by method like the tables (default before mpvg), named by run, not hash
    assert 0 < text.index("deit_tiny / default / imagenet seed 0") < text.index("deit_tiny / mpvg / imagenet seed 0")


def test_png_data_uri_rejects_other_bytes() -> None:
    assert png_data_uri(PNG + b"x").startswith("data:image/png;base64,iVBORw0KG")
    with pytest.raises(AssertionError):
        png_data_uri(b"GIF89a")


def test_spec_restricts_tables_curves_and_stored_figures(filled: Store, tmp_path: Path) -> None:
    analysis_dir(filled, tmp_path / "analysis")
    text = build_html(filled, spec="another")  # no run of the store belongs to it
    assert parse(text).images == [] and "No analysis yet" in text and "spec another" in text
    assert len(parse(build_html(filled, spec="curves")).images) == 3  # curves, correlation, heatmap


def test_empty_store_still_renders(tmp_path: Path) -> None:
    with Store(tmp_path / "empty.db") as store:
        text = build_html(store)
    page = parse(text)
    assert page.images == [] and "Dataset" in page.headers
    assert "no finished runs in the database yet" in text and "No analysis yet" in text


def test_too_many_figures_are_capped(filled: Store, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    import matplotlib.pyplot as plt

    one = figure_png(plt.figure(figsize=(0.1, 0.1)))
    for i in range(MAX_FIGURES + 2):
        (folder / f"f{i:03d}.png").write_bytes(one)
    text = build_html(filled, analysis_dirs=[folder])
    assert "2 more figure(s) not embedded" in text
    assert len(parse(text).images) == MAX_FIGURES + 1  # + the curves


# ------------------------------------------------------------------------- real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    # --no-sandbox: CI runs as root; no network is needed (and a fetch would show as a missing image)
    return subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--disable-dev-shm-usage", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_headless_chromium_renders_tables_and_images(filled: Store, tmp_path: Path) -> None:
    folder = analysis_dir(filled, tmp_path / "analysis")
    html_path = tmp_path / "report.html"
    html_path.write_text(build_html(filled, analysis_dirs=[folder]), encoding="utf-8")
    done = chromium("--dump-dom", html_path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    page = parse(done.stdout)  # the DOM as the browser built it, not our string
    assert "Final Top-1 (%) measured" in page.headers and "Top-1 (%) paper" in page.headers
    assert MPVG_DEIT in page.cells
    pngs = decoded_pngs(page)
    assert len(pngs) == 4 and all(p.startswith(PNG) for p in pngs)
    shot = tmp_path / "report.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", html_path.as_uri())
    assert done.returncode == 0 and shot.read_bytes().startswith(PNG), done.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:  # not a blank page: the tables and figures put ink on it
        assert image.size == (1280, 2400)
        colours = image.convert("L").getcolors(maxcolors=1 << 16) or []
        assert len(colours) > 20
