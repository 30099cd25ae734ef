"""Issue 23, observation 2 replayed as written: `run experiments/table1.yaml --smoke`, then
`run experiments/table2.yaml --smoke` on the same smoke database. Table 1's smoke keeps no
checkpoints; Table 2's T2T-ViT-7 fine-tunes from the ImageNet run Table 1 finished, so that
parent is retrained first instead of failing every fine-tune with "train that run first"."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpvgbench.matrix import expand
from mpvgbench.spec import load_spec
from mpvgbench.store import Store
from tests.cli.conftest import invoke

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.mark.slow  # Table 1's and Table 2's whole matrices, small, in this process
def test_table2_smoke_after_table1_smoke(tmp_path: Path) -> None:
    for name in ("table1", "table2"):
        res = invoke("run", EXPERIMENTS / f"{name}.yaml", "--smoke", "--device", "cpu", "--executor", "debug")
        assert res.exit_code == 0, f"{name}: {res.output[-3000:]}"
        assert "train that run first" not in res.output
    jobs = expand(load_spec(EXPERIMENTS / "table2.yaml"), smoke=True)
    parents = {job.depends_on for job in jobs if job.depends_on}
    assert parents  # the spec does fine-tune from ImageNet runs
    with Store(tmp_path / ".smoke" / "results.db") as store:
        assert set(store.statuses([job.key for job in jobs]).values()) == {"finished"}
