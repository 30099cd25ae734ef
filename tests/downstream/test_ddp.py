"""Dense prediction under DDP: the global-batch BatchNorm equals BatchNorm on the whole batch, and
two gloo processes (torchrun) train the same model as one process with the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpvgbench.downstream.sync_bn import GlobalBatchNorm2d, convert_to_global_batchnorm
from mpvgbench.rundir import read_checkpoint, read_jsonl
from mpvgbench.train import train_job
from tests.downstream import tiny
from tests.downstream.ddp_job import bn_inputs

ROOT = Path(__file__).resolve().parents[2]


def _torchrun(mode: str, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tests.downstream.ddp_job", mode, str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_convert_keeps_the_same_parameters_and_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Sequential(torch.nn.BatchNorm2d(4)))
    bn = model[1][0]
    weight, running_mean = bn.weight, bn.running_mean
    keys = list(model.state_dict())
    convert_to_global_batchnorm(model)
    assert isinstance(model[1][0], GlobalBatchNorm2d)
    assert model[1][0].weight is weight and model[1][0].running_mean is running_mean
    assert list(model.state_dict()) == keys  # checkpoints load either way


def test_without_a_process_group_it_is_batchnorm() -> None:
    x = torch.randn(2, 3, 4, 4)
    plain, glob = torch.nn.BatchNorm2d(3), GlobalBatchNorm2d(3)
    torch.testing.assert_close(glob(x), plain(x))
    torch.testing.assert_close(glob.running_var, plain.running_var)


# slow: two torchrun ranks; under the parallel fast suite one rank was aborted in gloo's teardown
# ('terminate called without an active exception') in 3 of 3 full runs, never alone: see the closing note
@pytest.mark.slow
def test_global_batchnorm_equals_batchnorm_over_the_whole_batch(tmp_path: Path) -> None:
    _torchrun("bn", tmp_path)
    x, upstream, params = bn_inputs()
    ref = torch.nn.BatchNorm2d(3)
    ref.load_state_dict(params, strict=False)
    x = x.clone().requires_grad_(True)
    y = ref(x)
    (y * upstream).sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad)
    # each rank's parameter gradient is its part; DDP sums (averages) them
    torch.testing.assert_close(sum(r["weight_grad"] for r in ranks), ref.weight.grad)
    torch.testing.assert_close(sum(r["bias_grad"] for r in ranks), ref.bias.grad)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], ref.running_mean)
        torch.testing.assert_close(r["running_var"], ref.running_var)  # unbiased over the 4 images


@pytest.mark.slow
def test_two_processes_train_the_segmenter_as_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    config = tiny.ade_config(max_iters=3)
    single = train_job(config, tmp_path / "single", device="cpu", checkpoint_every_min=None,
                              model_factory=tiny.tiny_segmenter_without_dropout)
    _torchrun("segmentation", tmp_path / "ddp")
    rows1, rows2 = read_jsonl(tmp_path / "single" / "metrics.jsonl"), read_jsonl(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["iteration"] for r in rows2] == [r["iteration"] for r in rows1] == [1, 2, 3]
    for a, b in zip(rows1, rows2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["miou"] == pytest.approx(a["miou"], abs=1e-6)
    s1, s2 = read_checkpoint(tmp_path / "single" / "checkpoint.pt"), read_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert s1 is not None and s2 is not None and s2["world_size"] == 2
    assert s1["model"].keys() == s2["model"].keys()  # no DDP/compile prefixes, GlobalBatchNorm = BatchNorm keys
    for name, tensor in s1["model"].items():
        torch.testing.assert_close(s2["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert single["miou"] == pytest.approx(read_jsonl(tmp_path / "ddp" / "metrics.jsonl")[-1]["miou"], abs=1e-6)


@pytest.mark.slow
def test_two_processes_train_and_evaluate_the_detector(tmp_path: Path) -> None:
    _torchrun("detection", tmp_path)
    import json

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["env"]["num_processes"] == 2 and result["iterations"] == 2
    assert 0 <= result["ap_box"] <= 100 and 0 <= result["ap_mask"] <= 100
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1
