"""The one training loop, run once per task (classification, dense prediction): exact resume
after a kill at an interval boundary or mid-interval, the checkpoint cadences (steps, timer,
request), no duplicated metrics, stdout lines, a monotonic wall time, non-finite runs."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mpvgbench.errors import NonFiniteError, NonFiniteLossError
from mpvgbench.rundir import read_checkpoint, read_jsonl
from mpvgbench.train import request_checkpoint, task_for
from tests.train.cases import CASES, Interrupt, TaskCase, assert_same_run, interrupt_at

pytestmark = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Each task's uninterrupted run, trained once for the module."""
    runs = {}
    for case in CASES:
        run = tmp_path_factory.mktemp(case.name)
        runs[case.name] = run, case.train(run)
    return runs


def _loop(run: Path) -> dict[str, Any]:
    return read_checkpoint(run)["loop"]  # type: ignore[index]


def test_uninterrupted_run_keeps_the_run_dir_contract(case: TaskCase, baselines: Any) -> None:
    run, result = baselines[case.name]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [(r["epoch"], r["iteration"]) for r in rows] == [(1, case.steps), (2, 2 * case.steps)]
    assert {"train_loss", "lr", "epoch_time_s", "eval_time_s", "images_per_s", case.metric} <= set(rows[0])
    assert json.loads((run / "result.json").read_text()) == json.loads(json.dumps(result))
    assert result["epochs"] == 2 and result["final_top1"] == rows[-1][case.metric]
    assert result["best_top1"] == max(r[case.metric] for r in rows) and result["wall_time_s"] > 0
    progress = json.loads((run / "progress.json").read_text())
    assert (progress["epoch"], progress["step"], progress["steps_per_epoch"]) == (2, case.steps, case.steps)
    assert _loop(run)["num_updates"] == 2 * case.steps and read_checkpoint(run)["epoch"] == 2  # type: ignore[index]


def test_resume_after_a_kill_at_an_interval_boundary_is_exact(case: TaskCase, baselines: Any, tmp_path: Path) -> None:
    run0, result0 = baselines[case.name]
    with pytest.raises(Interrupt):  # inside interval 2, no checkpoint since interval 1's
        case.train(tmp_path, progress_callback=interrupt_at(2, 1))
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    assert _loop(tmp_path)["step"] == 0 and not (tmp_path / "result.json").exists()
    assert_same_run(run0, tmp_path, result0, case.train(tmp_path))


def test_resume_after_a_kill_mid_interval_is_exact(case: TaskCase, baselines: Any, tmp_path: Path) -> None:
    # a checkpoint after every step inside an interval: killed after interval 2's last step, the
    # run resumes from the step before it. Drop path (and for classification mixup/cutmix)
    # draw random numbers, so a resume with the wrong batches or RNG states would not match.
    run0, result0 = baselines[case.name]
    with pytest.raises(Interrupt):
        case.train(tmp_path, checkpoint_every_steps=1, progress_callback=interrupt_at(2, case.steps))
    loop = _loop(tmp_path)
    assert (loop["epoch"], loop["step"], loop["num_updates"]) == (1, case.steps - 1, 2 * case.steps - 1)
    assert loop["epoch_loss_count"] == case.steps - 1 and loop["epoch_train_s"] > 0
    result = case.train(tmp_path, checkpoint_every_steps=1)
    assert_same_run(run0, tmp_path, result0, result)
    # images/s of the resumed interval counts its training seconds before the kill too
    last = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    train_s = last["epoch_time_s"] - last["eval_time_s"]
    assert train_s >= loop["epoch_train_s"]
    assert last["images_per_s"] == pytest.approx(case.steps * case.config.recipe.batch_size / train_s, rel=1e-6)


def test_metrics_not_duplicated_when_killed_between_metrics_and_checkpoint(
        case: TaskCase, baselines: Any, tmp_path: Path) -> None:
    run0, result0 = baselines[case.name]
    with pytest.raises(Interrupt):
        case.train(tmp_path, progress_callback=interrupt_at(2, 1))
    # as if killed after interval 2's metrics line was written but before its checkpoint
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    stale = {**rows[0], "epoch": 2, case.metric: -1.0}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, stale]))
    result = case.train(tmp_path)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert_same_run(run0, tmp_path, result0, result)


def test_finished_run_rerun_is_idempotent(case: TaskCase, baselines: Any, tmp_path: Path) -> None:
    run0, result0 = baselines[case.name]
    shutil.copytree(run0, tmp_path, dirs_exist_ok=True)
    assert_same_run(run0, tmp_path, result0, case.train(tmp_path))  # nothing left to train


def test_timer_checkpoints_inside_an_interval(case: TaskCase, tmp_path: Path) -> None:
    with pytest.raises(Interrupt):
        case.train(tmp_path, checkpoint_every_min=0.0, progress_callback=interrupt_at(1, 1))
    assert (_loop(tmp_path)["epoch"], _loop(tmp_path)["step"]) == (0, 1)  # every step is due
    with pytest.raises(Interrupt):
        case.train(tmp_path / "never", progress_callback=interrupt_at(1, 1))  # checkpoint_every_min=None
    assert read_checkpoint(tmp_path / "never") is None


def test_requested_checkpoint_is_written_at_the_next_step_then_reported(case: TaskCase, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def ask_at_the_start(progress: dict[str, Any]) -> None:
        if progress["step"] == 0:
            request_checkpoint()  # what the Slurm signal handler does

    def requeue() -> None:
        seen.append(_loop(tmp_path))  # the checkpoint exists when the requeue runs
        raise Interrupt

    with pytest.raises(Interrupt):
        case.train(tmp_path, progress_callback=ask_at_the_start, on_requested_checkpoint=requeue)
    assert [(s["epoch"], s["step"]) for s in seen] == [(0, 1)]
    assert case.train(tmp_path)["epochs"] == 2  # resumes; the request was consumed


def _nan_on_training_call(n: int, build: Any) -> Any:
    """A model factory whose model returns NaN from its ``n``-th training forward."""

    def factory(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = build(*args, **kwargs)
        calls = [0]

        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
            if module.training:
                calls[0] += 1
                if calls[0] == n:
                    return torch.utils._pytree.tree_map(lambda t: t * math.nan, output)
            return None

        model.register_forward_hook(hook)
        return model

    return factory


def test_nonfinite_loss_names_interval_and_step(case: TaskCase, tmp_path: Path) -> None:
    from mpvgbench.models import build_model_for_config

    factory = _nan_on_training_call(case.steps + 1, case.model_factory or build_model_for_config)
    with pytest.raises(NonFiniteLossError) as err:
        case.train(tmp_path, model_factory=factory)
    assert (err.value.epoch, err.value.step) == (2, 1)
    assert "epoch 2 step 1" in str(err.value) and "\n" not in str(err.value)
    assert read_checkpoint(tmp_path)["epoch"] == 1  # type: ignore[index]  # the NaN interval never saved
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_nonfinite_weights_after_the_last_update_are_no_result(
        case: TaskCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task_class = task_for(case.config)
    evaluate = task_class.evaluate

    def weights_gone_bad(self: Any) -> dict[str, float]:  # as a last update with a huge lr leaves them
        with torch.no_grad():
            next(self.model.parameters()).fill_(math.nan)
        return evaluate(self)

    monkeypatch.setattr(task_class, "evaluate", weights_gone_bad)
    with pytest.raises(NonFiniteError, match="non-finite weights after epoch 1"):
        case.train(tmp_path)
    assert not (tmp_path / "result.json").exists() and read_checkpoint(tmp_path) is None


def test_one_line_per_interval_on_stdout(case: TaskCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Interrupt):
        case.train(tmp_path, progress_callback=interrupt_at(2, 1))
    lines = [line for line in capsys.readouterr().out.splitlines() if f"{case.metric} " in line]
    assert len(lines) == 1
    row = read_jsonl(tmp_path / "metrics.jsonl")[0]
    for part in ("1/2", f"loss {row['train_loss']:.4f}", f"{case.metric} {row[case.metric]:.2f}",
                 f"lr {row['lr']:.3g}", "img/s"):
        assert part in lines[0], (part, lines[0])


def test_wall_time_survives_a_backward_clock_step(case: TaskCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_time = time.time
    calls = [0]

    def clock_going_back() -> float:  # two hours back on every call
        calls[0] += 1
        return real_time() - 7200.0 * calls[0]

    monkeypatch.setattr(time, "time", clock_going_back)
    with pytest.raises(Interrupt):
        case.train(tmp_path, progress_callback=interrupt_at(2, 1))
    assert _loop(tmp_path)["wall_time_s"] > 0 and calls[0] > 2
    assert case.train(tmp_path)["wall_time_s"] >= _loop(tmp_path)["wall_time_s"] > 0

