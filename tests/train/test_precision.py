"""amp/compile switches of the classification task: bf16 autocast and torch.compile run on CPU
when asked (the CUDA code path, testable here); ``auto`` keeps CPU runs fp32 and eager; compiled
runs save plain keys. (The dense task's: tests/downstream/test_amp_compile.py.)"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from mpvgbench.models import build_model_for_config
from mpvgbench.rundir import read_checkpoint, read_jsonl
from mpvgbench.train import train_job as train
from tests.train.cases import Interrupt, interrupt_at, make_config


class RecordDtype(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.dtypes = inner, set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.dtypes.add(out.dtype)
        return out


def _finite(result: dict[str, Any]) -> bool:
    return all(math.isfinite(result[k]) for k in ("final_top1", "final_top5", "ema_final_top1"))


@pytest.mark.parametrize(("amp", "dtype"), [("auto", torch.float32), ("on", torch.bfloat16), ("off", torch.float32)])
def test_amp_switch_on_cpu(tmp_path: Path, amp: str, dtype: torch.dtype) -> None:
    models: list[RecordDtype] = []

    def factory(config: Any, **kw: Any) -> nn.Module:
        models.append(RecordDtype(build_model_for_config(config, **kw)))
        return models[-1]

    config = make_config(epochs=1, max_steps_per_epoch=2, eval_max_batches=1)
    result = train(config, tmp_path, device="cpu", amp=amp, model_factory=factory)
    assert models[0].dtypes == {dtype} and _finite(result)
    assert (result["env"]["amp"], result["env"]["compiled"]) == (amp == "on", False)


def test_compiled_run_saves_plain_keys_and_resumes_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # dynamo's tracing and the OptimizedModule wrapper as in a real compiled run; the "eager"
    # backend skips inductor's C++ build (minutes here; the slow test below runs it for real)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    config = make_config(epochs=3, max_steps_per_epoch=2, eval_max_batches=1)
    with pytest.raises(Interrupt):  # epoch 1 compiled
        train(config, tmp_path, device="cpu", amp="on", compile="on", progress_callback=interrupt_at(2, 1))
    weights = read_checkpoint(tmp_path)["model"]  # type: ignore[index]
    assert not any(k.startswith("_orig_mod.") for k in weights)
    fresh = build_model_for_config(config)
    fresh.load_state_dict(weights)  # strict: the bare model's keys exactly
    with pytest.raises(Interrupt):  # epoch 2 eager, from the compiled run's checkpoint
        train(config, tmp_path, device="cpu", amp="on", compile="off", progress_callback=interrupt_at(3, 1))
    result = train(config, tmp_path, device="cpu", amp="on", compile="on")  # and back to compiled
    assert result["epochs"] == 3 and _finite(result) and result["env"]["compiled"]


@pytest.mark.slow
def test_inductor_bf16_on_cpu_then_eager_resume(tmp_path: Path) -> None:
    """The real thing: inductor compiles the training forward/backward with bf16 autocast on
    CPU (needs a C compiler; ~4 min on a busy 2-core machine, mostly kernel builds)."""
    config = make_config(epochs=2, max_steps_per_epoch=2, eval_max_batches=1)
    with pytest.raises(Interrupt):
        train(config, tmp_path, device="cpu", amp="on", compile="on", progress_callback=interrupt_at(2, 1))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"]) and math.isfinite(rows[0]["top1"])
    assert not any(k.startswith("_orig_mod.") for k in read_checkpoint(tmp_path)["model"])  # type: ignore[index]
    result = train(config, tmp_path, device="cpu", amp="on", compile="off")
    assert result["epochs"] == 2 and _finite(result)
