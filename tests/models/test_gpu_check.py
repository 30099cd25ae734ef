"""benchmarks/gpu_check.py runs on a CPU at a tiny size and writes the JSON a GPU run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 40 s on the 2-core machine: two interpreters, a gloo DDP step, 12 configs
def test_cpu_tiny_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # eager (--backend none) keeps it quick: compilation is covered by tests/models/test_compile.py
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
         "--models", "vit_micro", "--backend", "none", "--steps", "2", "--chunks", "2", "--warmup", "1",
         "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: a CPU ratio target missed on a busy machine
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["dtype"] == "bfloat16" and report["tiny"] is True
    rows = report["results"]
    assert [(r["model"], r["method"]) for r in rows] == [
        *(("vit_micro", m) for m in ("default", "gap", "lape", "pvg", "mpvg")), ("timm:deit_tiny", "default"),
    ]
    for row in rows:
        assert row["losses_finite"] is True
        assert row["train_img_s"] > 0 and row["eval_img_s"] > 0 and row["peak_mem_mb"] > 0
        assert row["train_vs_timm"] > 0
        assert (row["train_vs_default"] is None) == (row["model"] == "timm:deit_tiny")
    assert rows[0]["train_vs_default"] == 1.0  # default against itself, chunk by chunk
    # CPU target: every non-default method of every model, train and eval
    assert len(report["targets"]) == 4 * 2 and all(t["min"] == 0.95 for t in report["targets"])
    assert report["ddp"]["ran"] is True and report["ddp"]["backend"] == "gloo" and report["ddp"]["ok"] is True
    assert "gpu_check on" in proc.stdout and "DDP: 2-process gloo step ok" in proc.stdout


def test_write_throughput_records_what_run_dry_run_reads(tmp_path: Path) -> None:
    """--write-throughput: each measured model x method's training img/s under this device's name,
    read back by the cost estimate (mpvgbench.cost); timm's reference row is not a job's model."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from mpvgbench.cost import read_throughputs

    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"other GPU": [{"model": "deit_tiny", "method": "mpvg", "img_size": 224,
                                               "train_img_s": 5.0}]}))
    gpu_check.main(["--device", "cpu", "--tiny", "--models", "vit_micro", "--methods", "mpvg",
                    "--backend", "none", "--steps", "1", "--chunks", "1", "--warmup", "1", "--ddp", "off",
                    "--loader-seconds", "0", "--write-throughput", str(path)])
    name = gpu_check._device_name(gpu_check.torch.device("cpu"))
    rates = read_throughputs(path, name)
    assert sorted(rates) == [("vit_micro", "default", 8), ("vit_micro", "mpvg", 8)]
    assert all(rate > 0 for rate in rates.values())
    assert read_throughputs(path, "other GPU") == {("deit_tiny", "mpvg", 224): 5.0}  # kept
