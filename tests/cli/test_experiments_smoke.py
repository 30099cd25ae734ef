"""Every shipped spec's whole matrix builds, trains, stores and reports (`run --smoke`).

Smoke runs map each cell to a generated stand-in of its dataset in the real on-disk format
(ImageNet's JPEG folder with its CMYK/grayscale/PNG oddities, CIFAR-100's pickles, COCO JSON,
ADE20K PNG masks) read by the real readers through the recipe's real transforms (RandAugment,
Mixup/CutMix, random erasing), at a small size for a few steps, so this proves on CPU that
Tables 1-6, Fig. 5 (and the quickstart) are runnable end to end: every model x method of the
paper constructs, trains, checkpoints, lands in the database and reaches the report.
Specs share one database, as a user's would: Table 5's pos_0 row and Table 6's last row are
Table 1's DeiT-Ti MPVG cell and must not be trained again.

The jobs run in this process (``--executor debug``): the subprocess boundary is tested elsewhere
(tests/cli/test_reliability.py, tests/test_worker.py), and ~50 worker processes each importing
torch and timm were most of this file's time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result

from mpvgbench.matrix import expand
from mpvgbench.recipes import SMOKE_DATASETS
from mpvgbench.spec import load_spec
from mpvgbench.store import Store
from tests.cli.conftest import invoke

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _cli(*args: str, cwd: Path) -> Result:
    return invoke(*args)


def _smoke(spec_names: list[str], tmp_path: Path) -> dict[str, list[str]]:
    db, runs = tmp_path / "results.db", tmp_path / "runs"
    keys: dict[str, list[str]] = {}
    for name in spec_names:
        spec_path = EXPERIMENTS / f"{name}.yaml"
        done = _cli("run", str(spec_path), "--smoke", "--db", str(db), "--runs-dir", str(runs),
                    "--device", "cpu", "--executor", "debug", cwd=tmp_path)
        assert done.exit_code == 0, f"{name}: {done.output[-3000:]}"
        jobs = expand(load_spec(spec_path), smoke=True)
        keys[name] = [job.key for job in jobs]
        if name != "quickstart":  # the tables: real-format files and real transforms, no tensors
            assert {job.dataset for job in jobs} <= set(SMOKE_DATASETS.values()), name
            for job in jobs:
                if job.dataset in ("imagenet_synthetic", "cifar100_synthetic"):
                    assert (tmp_path / ".smoke" / "data" / f"{job.dataset}-v1" / ".complete").is_file()
        with Store(str(db)) as store:
            states = store.statuses(keys[name])
        assert set(states.values()) == {"finished"}, (name, states)
    return keys


@pytest.mark.slow
def test_table1_table5_table6_smoke_share_cells(tmp_path: Path) -> None:
    keys = _smoke(["table1", "table5", "table6"], tmp_path)
    assert len(keys["table1"]) == 24  # 6 backbones x Default/LaPE/PVG/MPVG
    # the shared DeiT-Ti MPVG cell: one run directory, trained once (one attempt)
    shared = set(keys["table1"]) & set(keys["table5"]) & set(keys["table6"])
    assert len(shared) == 1
    with Store(str(tmp_path / "results.db")) as store:
        (row,) = store.runs(keys=sorted(shared))
        assert row.attempts == 1 and set(row.specs) >= {"table1", "table5", "table6"}
    report = _cli("report", "--db", str(tmp_path / "results.db"), "--format", "json", cwd=tmp_path)
    assert report.exit_code == 0, report.output
    rows = json.loads(report.output)["rows"]
    models = {row["Model"] for row in rows}
    assert models == {"DeiT-Ti", "DeiT-S", "DeiT-B", "Swin-Ti", "CeiT-Ti", "T2T-ViT-7"}
    for table in ("1", "5", "6"):
        rendered = _cli("report", "--db", str(tmp_path / "results.db"), "--table", table,
                        "--format", "csv", cwd=tmp_path)
        assert rendered.exit_code == 0, rendered.output


@pytest.mark.slow
def test_table2_and_quickstart_smoke(tmp_path: Path) -> None:
    keys = _smoke(["table2", "quickstart"], tmp_path)
    spec = load_spec(EXPERIMENTS / "table2.yaml")
    jobs = expand(spec, smoke=True)
    finetunes = [job for job in jobs if job.depends_on]
    assert len(finetunes) == 4 and all(job.model == "t2t_vit_7" for job in finetunes)
    # each fine-tune started from its own parent's checkpoint, which finished first
    with Store(str(tmp_path / "results.db")) as store:
        for job in finetunes:
            child, parent = store.runs(keys=[job.key])[0], store.runs(keys=[job.depends_on])[0]
            assert parent.status == child.status == "finished"
            assert parent.finished_at is not None and child.started_at is not None
            assert parent.finished_at <= child.started_at
    assert len(keys["quickstart"]) == 15


@pytest.mark.slow
def test_fig5_smoke_fills_the_fig5_report(tmp_path: Path) -> None:
    keys = _smoke(["fig5"], tmp_path)
    assert len(keys["fig5"]) == 2  # GAP (a), GAP + Last-LN PE (b)
    rendered = _cli("report", "--db", str(tmp_path / "results.db"), "--table", "fig5",
                    "--format", "json", cwd=tmp_path)
    assert rendered.exit_code == 0, rendered.output
    rows = json.loads(rendered.output)["rows"]
    assert len(rows) == 2
    for row in rows:  # every Fig. 5 cell found its (smoke) run
        measured = [value for name, value in row.items() if name.endswith("measured")]
        assert measured and all(value is not None for value in measured), row


@pytest.mark.slow
def test_table3_table4_smoke_fill_the_dense_reports(tmp_path: Path) -> None:
    """ViT-Adapter-Ti + Mask R-CNN / UperNet fine-tuned from the DeiT-Ti parents (shared by both
    specs, trained once; their weights survive Table 3's smoke clean-up for Table 4)."""
    keys = _smoke(["table3", "table4"], tmp_path)
    assert len(keys["table3"]) == len(keys["table4"]) == 8  # 4 DeiT-Ti parents + 4 fine-tunes
    assert len(set(keys["table3"]) & set(keys["table4"])) == 4
    for table, metrics in (("3", ("AP box", "AP mask")), ("4", ("mIoU",))):
        rendered = _cli("report", "--db", str(tmp_path / "results.db"), "--table", table,
                        "--format", "json", cwd=tmp_path)
        assert rendered.exit_code == 0, rendered.output
        rows = json.loads(rendered.output)["rows"]
        assert len(rows) == 4
        for row in rows:  # every method's cell shows its smoke run's measured value
            measured = [value for name, value in row.items() if name.endswith("measured")]
            assert len(measured) == len(metrics) and all(v is not None for v in measured), row


@pytest.mark.slow
def test_table4_smoke_under_ddp_through_the_local_executor(tmp_path: Path) -> None:
    """The whole spine with two processes per job on CPU: local executor -> torchrun (gloo) ->
    worker -> the DeiT-Ti parent and the UperNet fine-tune under DDP -> store -> report."""
    db, runs = tmp_path / "results.db", tmp_path / "runs"
    done = _cli("run", str(EXPERIMENTS / "table4.yaml"), "--smoke", "--db", str(db), "--runs-dir", str(runs),
                "--device", "cpu", "--executor", "local", "--set", "executor.nproc_per_node=2",
                "--only", "method=mpvg", cwd=tmp_path)
    assert done.exit_code == 0, done.output[-3000:]
    results = [json.loads(p.read_text()) for p in runs.rglob("result.json")]
    assert len(results) == 2 and all(r["env"]["num_processes"] == 2 for r in results)
    (dense,) = [r for r in results if r.get("task") == "segmentation"]
    assert dense["iterations"] == 4 and dense["miou"] is not None
    rendered = _cli("report", "--db", str(db), "--table", "4", "--format", "json", cwd=tmp_path)
    assert rendered.exit_code == 0, rendered.output
    rows = {row["Method"]: row for row in json.loads(rendered.output)["rows"]}
    assert rows["MPVG"]["mIoU measured"]["values"] == [dense["miou"]]
    assert rows["PVG"]["mIoU measured"]["n"] == 0  # --only: one method ran
