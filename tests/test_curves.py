"""Training curves and the per-method correlation figure, from a store filled with known runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mpvgbench.curves import (
    collect_curves, correlation_analyses, correlation_figure, curves_figure, plot_correlation_by_method,
    plot_curves, seed_band,
)
from mpvgbench.methods import PRESETS
from mpvgbench.store import Store
from tests.test_store import FakeJob, make_job, write_run_dir

EPOCHS = 4


def finish(store: Store, root: Path, job: FakeJob, final: float, epochs: int = EPOCHS) -> None:
    store.register_jobs([job], "curves")
    assert store.claim(job.key, "o", stale_after_s=60)
    store.ingest_run_dir(write_run_dir(root, job, final=final, epochs=epochs))


def fill(store: Store, root: Path) -> dict[str, FakeJob]:
    """DeiT-Ti / ImageNet: mpvg x3 seeds, pvg x2, default x1 (all 4 epochs), a 1-epoch mpvg run
    of another configuration (not shown), a failed lape run; ViT-Lite / CIFAR-100: mpvg x1."""
    jobs: dict[str, FakeJob] = {}
    for method, finals in (("mpvg", (73.0, 73.5, 74.0)), ("pvg", (72.0, 73.0)), ("default", (70.0,))):
        for seed, final in enumerate(finals):
            jobs[f"{method}{seed}"] = job = make_job(seed, method)
            finish(store, root, job, final)
    finish(store, root, make_job(7, "mpvg", epochs=1), 5.0, epochs=1)
    failed = make_job(0, "lape")
    store.register_jobs([failed], "curves")
    assert store.claim(failed.key, "o", stale_after_s=60)
    store.ingest_run_dir(write_run_dir(root, failed, final=None, error={"kind": "oom", "error": "x"}))
    jobs["lite"] = lite = make_job(0, "mpvg", model="vit_lite_7_4", dataset="cifar100")
    finish(store, root, lite, 76.0)
    return jobs


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "results.db") as store:
        fill(store, tmp_path / "runs")
        yield store


def test_seed_band_mean_min_max_per_epoch() -> None:
    band = seed_band([{0: 1.0, 1: 2.0}, {0: 3.0, 1: 6.0}, {0: 2.0}])
    assert band is not None and band.n_seeds == 3
    assert band.epochs.tolist() == [0, 1]
    assert band.mean.tolist() == [2.0, 4.0] and band.low.tolist() == [1.0, 2.0] and band.high.tolist() == [3.0, 6.0]
    assert seed_band([{}, {}]) is None


def test_collect_curves_groups_by_cell_method_and_seed(filled: Store) -> None:
    panels = collect_curves(filled)
    assert [(p.model, p.dataset) for p in panels] == [("vit_lite_7_4", "cifar100"), ("deit_tiny", "imagenet"),
                                                      ("deit_tiny", "imagenet")]
    # the 1-epoch configuration: its own panel, named by what differs, never mixed in nor hidden
    assert [p.title for p in panels] == ["ViT-Lite-7/4 / CIFAR-100", "DeiT-Ti / ImageNet-1K (epochs=1)",
                                         "DeiT-Ti / ImageNet-1K (epochs=300)"]
    assert [c.label for c in panels[1].methods] == ["mpvg"] and sorted(panels[1].methods[0].seeds) == [7]
    deit = panels[2]
    # preset order, the failed lape run absent
    assert [c.label for c in deit.methods] == ["default", "pvg", "mpvg"]
    mpvg = deit.methods[2]
    assert sorted(mpvg.seeds) == [0, 1, 2]
    band = seed_band(mpvg.series("top1"))
    assert band is not None and band.epochs.tolist() == list(range(EPOCHS))
    # write_run_dir: top1 at epoch e = final - EPOCHS + e + 1, so the last epoch is the final value
    assert band.mean[-1] == pytest.approx(73.5) and (band.low[-1], band.high[-1]) == (73.0, 74.0)
    loss = seed_band(mpvg.series("train_loss"))
    assert loss is not None and loss.mean.tolist() == [5.0, 4.0, 3.0, 2.0]
    assert collect_curves(filled, spec="nothing") == []


def test_curves_figure_one_row_per_cell_three_metrics(filled: Store, tmp_path: Path) -> None:
    panels = collect_curves(filled)
    fig = curves_figure(panels)
    axes = fig.axes
    assert len(axes) == 3 * 3
    deit_top1 = axes[6]
    assert "DeiT-Ti" in deit_top1.get_title() and "top-1" in deit_top1.get_title()
    labels = [t.get_text() for t in deit_top1.get_legend().get_texts()]
    assert labels == ["default (n=1)", "pvg (n=2)", "mpvg (n=3)"]
    mean_line = deit_top1.lines[2]
    assert np.allclose(mean_line.get_ydata(), [70.5, 71.5, 72.5, 73.5])
    assert len(deit_top1.collections) == 2  # bands for pvg and mpvg; one seed draws no band
    # PVG and MPVG apart without colour: line style and marker differ; every line has markers
    styles = {line.get_label(): (line.get_linestyle(), line.get_marker()) for line in deit_top1.lines}
    assert styles["pvg (n=2)"] != styles["mpvg (n=3)"]
    assert len(set(styles.values())) == 3 and all(marker not in (None, "None", "") for _, marker in styles.values())
    path = plot_curves(panels, tmp_path / "out" / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 600


def _analysis(key: str, method: str, corr: list[float | None] | None) -> dict[str, object]:
    return {"key": key, "model": "vit_micro", "dataset": "digits", "method": method, "correlation": corr,
            "correlation_note": None if corr is not None else "no layer-wise PE"}


def test_correlation_one_line_per_method_mean_over_seeds(tmp_path: Path) -> None:
    analyses = [_analysis("a" * 16, "pvg", [None, 0.2, 0.4]), _analysis("b" * 16, "pvg", [None, 0.4, 0.6]),
                _analysis("c" * 16, "mpvg", [None, -0.2, -0.4]), _analysis("d" * 16, "default", None)]
    fig = correlation_figure(analyses)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["pvg (n=2)", "mpvg (n=1)"]  # by method name, not by hash
    pvg = next(line for line in ax.lines if line.get_label() == "pvg (n=2)")
    assert pvg.get_xdata().tolist() == [1, 2] and np.allclose(pvg.get_ydata(), [0.3, 0.5])
    assert any("default: no layer-wise PE" in t.get_text() for t in ax.texts)
    path = plot_correlation_by_method(analyses, tmp_path / "correlation.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_correlation_analyses_from_the_store(filled: Store) -> None:
    assert correlation_analyses(filled) == []
    keys = [r.key for r in filled.runs(status="finished") if r.method == PRESETS["mpvg"] and r.model == "deit_tiny"]
    filled.add_analysis(keys[0], {"pe_correlation": [0.1, 0.2], "pe_correlation_note": None})
    (found,) = correlation_analyses(filled)
    assert found["method"] == "mpvg" and found["correlation"] == [0.1, 0.2] and found["key"] == keys[0]
