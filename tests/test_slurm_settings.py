"""SlurmSettings: validation, one-line errors and the mapping to submitit / sbatch (no cluster needed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mpvgbench.errors import SlurmError
from mpvgbench.slurm_settings import THREAD_SETUP, SlurmSettings, parse_time_minutes

if TYPE_CHECKING:
    from mpvgbench.executors.base import RunContext
    from mpvgbench.matrix import Job
    from mpvgbench.spec import Spec
    from mpvgbench.store import Store


@pytest.mark.parametrize(
    ("value", "minutes"),
    [(90, 90), ("90", 90), ("01:30:00", 90), ("00:00:30", 1), ("10:30", 11), ("1-00", 1440),
     ("2-01:00", 2940), ("1-00:00:01", 1441)],
)
def test_time_forms(value: int | str, minutes: int) -> None:
    assert parse_time_minutes(value) == minutes
    assert SlurmSettings.parse({"time": value}).timeout_min == minutes


@pytest.mark.parametrize("value", ["abc", "1:2:3:4", "", 0, -5, "00:00:00", True])
def test_bad_time_is_one_line(value: object) -> None:
    with pytest.raises(ValueError) as info:
        SlurmSettings.parse({"time": value})
    message = str(info.value)
    assert "\n" not in message and message.startswith("slurm.time")


def test_unknown_key_names_allowed_keys() -> None:
    with pytest.raises(ValueError) as info:
        SlurmSettings.parse({"partiton": "gpu", "time": 10})
    message = str(info.value)
    assert "\n" not in message
    assert "'partiton'" in message
    for allowed in ("partition", "time", "gpus_per_node", "tasks_per_node", "mem", "additional_parameters"):
        assert allowed in message


@pytest.mark.parametrize(
    ("data", "where"),
    [({"nodes": 0}, "slurm.nodes"), ({"mem": "8 gigs"}, "slurm.mem"), ({"max_requeues": -1}, "slurm.max_requeues"),
     ({"additional_parameters": {"time": "10"}}, "slurm.additional_parameters"),
     ({"additional_parameters": {"--output": "x"}}, "slurm.additional_parameters"),
     ({"gpus_per_node": "two"}, "slurm.gpus_per_node")],
)
def test_bad_values_are_one_line(data: dict[str, object], where: str) -> None:
    with pytest.raises(ValueError) as info:
        SlurmSettings.parse(data)
    assert str(info.value).startswith(where) and "\n" not in str(info.value)


def test_reserved_additional_parameter_points_to_field() -> None:
    with pytest.raises(ValueError, match="use the slurm key `partition`"):
        SlurmSettings.parse({"additional_parameters": {"partition": "x"}})


def test_defaults_map_to_minimal_parameters() -> None:
    params = SlurmSettings.parse(None).submitit_parameters()
    assert params == {"name": "mpvgbench", "timeout_min": 60, "nodes": 1, "tasks_per_node": 1,
                      "slurm_signal_delay_s": 90, "slurm_array_parallelism": 256,
                      "slurm_setup": list(THREAD_SETUP)}
    assert SlurmSettings.parse(None).submitit_parameters("table1")["name"] == "table1"
    assert SlurmSettings.parse({"job_name": "mine"}).submitit_parameters("table1")["name"] == "mine"


def test_full_mapping() -> None:
    s = SlurmSettings.parse({
        "partition": "gpu", "time": "02:00:00", "nodes": 2, "gpus_per_node": 4, "tasks_per_node": 4,
        "cpus_per_task": 8, "mem": "64g", "account": "proj", "qos": "high", "constraint": "a100",
        "array_parallelism": 16, "max_requeues": 5, "setup": ["module load cuda"],
        "additional_parameters": {"mail-user": "me@x.org"}, "folder": "/scratch/logs",
        "gres": "gpu:a100:4", "gpus_per_task": 1, "exclusive": True, "reservation": "paper",
        "nodelist": "gpu[01-02]", "exclude": "gpu07",
    })
    assert s.submitit_parameters() == {
        "name": "mpvgbench", "timeout_min": 120, "nodes": 2, "tasks_per_node": 4, "cpus_per_task": 8,
        "gpus_per_node": 4, "slurm_partition": "gpu", "slurm_mem": "64G", "slurm_account": "proj",
        "slurm_qos": "high", "slurm_constraint": "a100", "slurm_array_parallelism": 16,
        "slurm_signal_delay_s": 90, "slurm_setup": [*THREAD_SETUP, "module load cuda"],
        "slurm_additional_parameters": {"mail_user": "me@x.org", "reservation": "paper"},
        "slurm_gres": "gpu:a100:4", "slurm_gpus_per_task": 1, "slurm_exclusive": True,
        "slurm_nodelist": "gpu[01-02]", "slurm_exclude": "gpu07",
    }
    assert SlurmSettings.parse({"mem_per_gpu": "40g"}).submitit_parameters()["slurm_mem_per_gpu"] == "40G"
    assert s.max_requeues == 5
    assert s.base_folder(Path("/runs")) == Path("/scratch/logs")
    assert SlurmSettings().base_folder(Path("/runs")) == Path("/runs/_slurm")


@pytest.mark.parametrize("key", ["exclusive", "gres", "reservation", "nodelist", "w", "--exclude",
                                 "mem-per-gpu", "gpus_per_task"])
def test_common_sbatch_options_are_first_class_keys(key: str) -> None:
    with pytest.raises(ValueError, match="use the slurm key"):
        SlurmSettings.parse({"additional_parameters": {key: "x"}})


def test_mem_and_mem_per_gpu_exclude_each_other() -> None:
    with pytest.raises(SlurmError, match="mem and mem_per_gpu exclude each other"):
        SlurmSettings.parse({"mem": "8G", "mem_per_gpu": "8G"})


def test_merged_overrides_only_the_keys_set() -> None:
    base = SlurmSettings.parse({"time": 30, "partition": "gpu", "mem": "8G"})
    override = SlurmSettings.parse({"time": "1-00:00:00", "gpus_per_node": 4})
    merged = base.merged(override)
    assert (merged.timeout_min, merged.gpus_per_node, merged.partition, merged.mem) == (1440, 4, "gpu", "8G")
    assert base.merged(None) is base and base.merged(SlurmSettings()) is base
    with pytest.raises(ValueError, match="exclude each other"):
        base.merged(SlurmSettings.parse({"mem_per_gpu": "40G"}))
    assert base.merged(SlurmSettings.parse({"mem": None, "mem_per_gpu": "40G"})).mem is None


def test_signal_delay_fits_short_time_limits() -> None:
    assert SlurmSettings.parse({"time": 1}).effective_signal_delay_s == 15
    assert SlurmSettings.parse({"time": 2}).effective_signal_delay_s == 30
    assert SlurmSettings.parse({"time": 600}).effective_signal_delay_s == 90
    assert SlurmSettings.parse({"time": 1, "signal_delay_s": 50}).effective_signal_delay_s == 50


def test_resources_key_groups_equal_settings() -> None:
    a = SlurmSettings.parse({"time": 10, "mem": "1G"})
    b = SlurmSettings.parse({"mem": "1g", "time": 10})
    c = SlurmSettings.parse({"time": 10, "mem": "2G"})
    assert a.resources_key() == b.resources_key() != c.resources_key()


def test_parse_outside_a_spec_is_one_line() -> None:
    assert SlurmSettings.parse({"time": "00:10:00", "mem": "1g"}).model_dump(exclude_unset=True) == {
        "time": "00:10:00", "mem": "1G"}
    with pytest.raises(SlurmError, match=r"^slurm: unknown key 'walltime'; allowed: partition"):
        SlurmSettings.parse({"walltime": 5})


def _sbatch_text(settings: SlurmSettings, folder: Path, monkeypatch: pytest.MonkeyPatch, count: int = 1) -> str:
    """The sbatch script submitit would submit, without a cluster (srun lookup patched)."""
    import submitit
    import submitit.slurm.slurm as submitit_slurm

    monkeypatch.setattr(submitit_slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=settings.max_requeues)
    ex.update_parameters(**settings.submitit_parameters())
    inner = ex._executor
    assert isinstance(inner, submitit_slurm.SlurmExecutor)
    assert inner.max_num_timeout == settings.max_requeues
    if count > 1:
        inner.parameters["map_count"] = count
    return inner._make_submission_file_text("python -m x", "uid")


def test_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = SlurmSettings.parse({
        "partition": "gpu", "time": "00:30:00", "gpus_per_node": 2, "tasks_per_node": 2, "mem": "8G",
        "account": "acc", "qos": "q", "constraint": "v100", "max_requeues": 2, "array_parallelism": 3,
        "setup": ["echo hi"], "additional_parameters": {"mail-type": "END"},
    })
    text = _sbatch_text(s, tmp_path, monkeypatch, count=10)
    for line in ("--partition=gpu", "--time=30", "--gpus-per-node=2", "--ntasks-per-node=2", "--mem=8G",
                 "--account=acc", "--qos=q", "--constraint=v100", "--array=0-9%3", "--signal=USR2@90",
                 "--job-name=mpvgbench", "--mail-type=END", "--nodes=1"):
        assert f"#SBATCH {line}" in text, line
    assert "echo hi" in text


def test_sbatch_script_first_class_keys_and_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = SlurmSettings.parse({"gres": "gpu:2", "gpus_per_task": 1, "mem_per_gpu": "20G", "exclusive": True,
                             "reservation": "paper", "nodelist": "n[1-2]", "exclude": "n7", "cpus_per_task": 6})
    text = _sbatch_text(s, tmp_path, monkeypatch)
    for line in ("--gres=gpu:2", "--gpus-per-task=1", "--mem-per-gpu=20G", "--exclusive", "--reservation=paper",
                 "--nodelist='n[1-2]'", "--exclude=n7", "--cpus-per-task=6"):
        assert f"#SBATCH {line}" in text, line
    # threads follow the allocation, exported before srun starts the job's Python
    setup = text.index('export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"')
    assert setup < text.index("srun ")


def test_sbatch_script_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _sbatch_text(SlurmSettings.parse({"time": 1}), tmp_path, monkeypatch)
    assert "#SBATCH --time=1" in text and "#SBATCH --signal=USR2@15" in text
    assert "gpus-per-node" not in text and "--partition" not in text and "--mem" not in text


# ------------------------------------------------------- executor logic against fake Slurm tools


def _tool(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """sbatch/srun/scontrol/squeue/scancel stand-ins on PATH; sbatch appends scripts to sbatch.log."""
    from mpvgbench.executors import slurm

    bin_dir = tmp_path / "bin"
    log = tmp_path / "sbatch.log"
    _tool(bin_dir, "sbatch", f'n=$(cat {tmp_path}/n 2>/dev/null || echo 100); n=$((n+1)); echo $n > {tmp_path}/n\n'
                             f'cat "$1" >> {log}; echo "=== end" >> {log}; echo "Submitted batch job $n"')
    _tool(bin_dir, "srun", "exit 0")
    _tool(bin_dir, "scontrol", "echo 'MaxArraySize            = 3'")
    _tool(bin_dir, "squeue", f"cat {tmp_path}/squeue.out 2>/dev/null; exit 0")
    _tool(bin_dir, "scancel", f'echo "$@" >> {tmp_path}/scancel.log')
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    slurm.max_array_size.cache_clear()
    yield tmp_path
    slurm.max_array_size.cache_clear()


def _setup(tmp_path: Path, n_seeds: int, **spec_extra: Any) -> tuple[Spec, list[Job], Store, RunContext]:
    from mpvgbench.executors.base import RunContext
    from mpvgbench.matrix import expand
    from mpvgbench.spec import parse_spec
    from mpvgbench.store import Store

    spec = parse_spec({"name": "fake", "models": ["vit_micro"], "methods": ["default"], "datasets": ["digits"],
                       "seeds": list(range(n_seeds)), "executor": {"name": "slurm", "device": "cpu"},
                       "slurm": {"time": 5, "folder": str(tmp_path / "logs")}, **spec_extra})
    jobs = expand(spec)
    store = Store(str(tmp_path / "r.db"))
    store.register_jobs(jobs, spec.name)
    return spec, jobs, store, RunContext(runs_root=tmp_path / "runs", device="cpu")


def test_launch_splits_arrays_at_max_array_size(fake_slurm: Path) -> None:
    from mpvgbench.executors.slurm import SlurmExecutor, log_paths

    spec, jobs, store, ctx = _setup(fake_slurm, 7)
    summary = SlurmExecutor.from_spec(spec).launch(jobs, store, ctx)
    assert len(summary.launched) == 7
    scripts = (fake_slurm / "sbatch.log").read_text().split("=== end")[:-1]
    arrays = [line for s in scripts for line in s.splitlines() if line.startswith("#SBATCH --array")]
    assert arrays == ["#SBATCH --array=0-2%3", "#SBATCH --array=0-2%3"]  # 3 + 3 + a single job
    assert len(scripts) == 3 and "--time=5" in scripts[0]
    assert sorted(summary.external_ids.values()) == ["101_0", "101_1", "101_2", "102_0", "102_1", "102_2", "103"]
    for job in jobs:
        row = store.runs(keys=[job.key])[0]
        assert row.status == "running" and row.executor == "slurm"
        assert row.external_id == summary.external_ids[job.key]
        paths = log_paths(row)
        assert [p.name for p in paths][:2] == [f"{row.external_id}_0_log.out", f"{row.external_id}_0_log.err"]
    assert any("mpvgbench status" in m for m in summary.messages)
    # everything is queued: a second launch submits nothing
    (fake_slurm / "squeue.out").write_text("".join(f"{i} PENDING\n" for i in summary.external_ids.values()))
    again = SlurmExecutor.from_spec(spec).launch(jobs, store, ctx)
    assert again.launched == [] and len(again.skipped) == 7


def test_reconcile_outcomes(fake_slurm: Path) -> None:
    from mpvgbench.executors.slurm import SlurmExecutor, reconcile
    from mpvgbench.rundir import atomic_write_json

    spec, jobs, store, ctx = _setup(fake_slurm, 5)
    summary = SlurmExecutor.from_spec(spec).launch(jobs, store, ctx)
    ids = summary.external_ids
    done, requeued, killed, timed_out, running = jobs
    atomic_write_json(ctx.run_dir(requeued.key) / "error.json", {"key": requeued.key, "kind": "infra",
                                                               "error": "SystemExit: -1", "traceback_tail": ""})
    stderr = Path(json.loads((ctx.run_dir(killed.key) / "slurm.json").read_text())["stderr"][0])
    stderr.parent.mkdir(parents=True, exist_ok=True)
    stderr.write_text("slurmstepd: error: *** JOB CANCELLED ***\n")
    (fake_slurm / "squeue.out").write_text(
        f"{ids[requeued.key]} PENDING\n{ids[killed.key]} CANCELLED\n{ids[timed_out.key]} TIMEOUT\n"
        f"{ids[running.key]} RUNNING\n")
    messages = reconcile(store, store.runs(status="running"))
    assert messages == ["3 Slurm job(s) left the queue without a result: marked failed"]
    status = {j.key: store.runs(keys=[j.key])[0] for j in jobs}
    # `done` left the queue without files (purged): failed as lost
    assert status[done.key].status == "failed" and "left the queue" in (status[done.key].error or "")
    assert status[requeued.key].status == "running"  # stale error.json of a requeued job is ignored
    assert status[killed.key].status == "failed" and status[killed.key].failure_kind == "lost"
    assert "ended CANCELLED" in (status[killed.key].error or "")
    assert "JOB CANCELLED" in (status[killed.key].traceback_tail or "")
    assert status[timed_out.key].failure_kind == "timeout" and "time limit 5 min" in (status[timed_out.key].error or "")
    assert status[running.key].status == "running"


def test_reconcile_with_unreachable_scheduler(fake_slurm: Path) -> None:
    import time

    from mpvgbench.executors.slurm import SlurmExecutor, reconcile

    spec, jobs, store, ctx = _setup(fake_slurm, 1)
    SlurmExecutor.from_spec(spec).launch(jobs, store, ctx)
    _tool(fake_slurm / "bin", "squeue", "sleep 60")
    t0 = time.monotonic()
    messages = reconcile(store, store.runs(status="running"), timeout_s=1)
    assert time.monotonic() - t0 < 5
    assert len(messages) == 1 and "unreachable" in messages[0] and "did not answer" in messages[0]
    _tool(fake_slurm / "bin", "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1")
    messages = reconcile(store, store.runs(status="running"))
    assert "Unable to contact slurm controller" in messages[0]
    assert store.runs()[0].status == "running"


def test_squeue_purged_ids_are_absent(fake_slurm: Path) -> None:
    from mpvgbench.executors.slurm import squeue_states

    _tool(fake_slurm / "bin", "squeue", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1")
    assert squeue_states(["7"]) == {}
    assert squeue_states([]) == {}


def test_no_slurm_is_a_one_line_error_and_releases_claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mpvgbench.executors.slurm import SlurmError, SlurmExecutor

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    spec, jobs, store, ctx = _setup(tmp_path, 2)
    with pytest.raises(SlurmError) as info:
        SlurmExecutor.from_spec(spec).launch(jobs, store, ctx)
    assert "\n" not in str(info.value) and "--executor local" in str(info.value)
    assert {r.status for r in store.runs()} == {"pending"}


def test_sbatch_rejection_is_a_one_line_error(fake_slurm: Path) -> None:
    from mpvgbench.executors.slurm import SlurmError, SlurmExecutor

    _tool(fake_slurm / "bin", "sbatch", "echo 'sbatch: error: invalid partition specified: nope' >&2; exit 1")
    spec, jobs, store, ctx = _setup(fake_slurm, 2)
    with pytest.raises(SlurmError, match="invalid partition specified: nope") as info:
        SlurmExecutor.from_spec(spec).launch(jobs, store, ctx)
    assert "\n" not in str(info.value)
    assert {r.status for r in store.runs()} == {"pending"}


def test_cancel_scancels_and_marks_cancelled(fake_slurm: Path) -> None:
    from mpvgbench.executors.slurm import SlurmExecutor

    spec, jobs, store, ctx = _setup(fake_slurm, 2)
    ex = SlurmExecutor.from_spec(spec)
    summary = ex.launch(jobs, store, ctx)
    ids = ex.cancel([j.key for j in jobs], store)
    assert sorted(ids) == sorted(summary.external_ids.values())
    assert (fake_slurm / "scancel.log").read_text().split() == sorted(ids)
    assert {r.status for r in store.runs()} == {"cancelled"}


def test_init_from_child_depends_on_parent(fake_slurm: Path) -> None:
    from mpvgbench.executors.slurm import SlurmExecutor

    spec, jobs, store, ctx = _setup(fake_slurm, 2, init_from={"dataset": "imagefolder"},
                                    dataset_overrides={"imagefolder": {"num_classes": 10}})
    summary = SlurmExecutor.from_spec(spec).launch(jobs, store, ctx)
    scripts = (fake_slurm / "sbatch.log").read_text().split("=== end")[:-1]
    parents = [j for j in jobs if not j.depends_on]
    children = [j for j in jobs if j.depends_on]
    assert len(parents) == len(children) == 2
    assert "--dependency" not in scripts[0] and "#SBATCH --array=0-1%2" in scripts[0]
    for child, script in zip(children, scripts[1:]):  # one job per parent: a failed parent cancels only its child
        assert child.depends_on is not None
        assert f"#SBATCH --dependency=afterok:{summary.external_ids[child.depends_on]}" in script
        assert "#SBATCH --kill-on-invalid-dep=yes" in script


def test_model_and_dataset_overrides_split_arrays_by_resources(fake_slurm: Path) -> None:
    from mpvgbench.executors.slurm import SlurmExecutor

    spec, jobs, store, ctx = _setup(
        fake_slurm, 2, models=["vit_micro", "vit_lite_7_4"], datasets=["digits", "synthetic"],
        model_overrides={"vit_lite_7_4": {"slurm": {"time": "02:00:00", "gpus_per_node": 2}}},
        dataset_overrides={"synthetic": {"slurm": {"time": 7, "mem": "2G"}}})
    executor = SlurmExecutor.from_spec(spec)
    by_cell = {(j.model, j.dataset): executor.settings_for(j) for j in jobs}
    assert by_cell[("vit_micro", "digits")].timeout_min == 5  # the spec's
    assert (by_cell[("vit_micro", "synthetic")].timeout_min, by_cell[("vit_micro", "synthetic")].mem) == (7, "2G")
    lite = by_cell[("vit_lite_7_4", "synthetic")]  # the model's keys win over the dataset's
    assert (lite.timeout_min, lite.gpus_per_node, lite.mem) == (120, 2, "2G")
    assert {s.job_name for s in by_cell.values()} == {"fake"}  # the spec's name
    summary = executor.launch(jobs, store, ctx)
    arrays = {ext.split("_")[0] for ext in summary.external_ids.values()}
    assert len(arrays) == 4  # one array per distinct resources, seeds share theirs
    text = (fake_slurm / "sbatch.log").read_text()
    assert text.count("#SBATCH --job-name=fake") == 4 and text.count("#SBATCH --gpus-per-node=2") == 2


def test_conflicting_override_is_a_one_line_error(fake_slurm: Path) -> None:
    from mpvgbench.executors.slurm import SlurmExecutor

    spec, jobs, store, ctx = _setup(fake_slurm, 1, model_overrides={"vit_micro": {"slurm": {"mem_per_gpu": "4G"}}},
                                    dataset_overrides={"digits": {"slurm": {"mem": "4G"}}})
    with pytest.raises(SlurmError, match="slurm for vit_micro on digits.*exclude each other"):
        SlurmExecutor.from_spec(spec).launch(jobs, store, ctx)
    assert {r.status for r in store.runs()} == {"pending"}  # claims handed back


def test_scheduler_states_are_recorded_and_shown(fake_slurm: Path) -> None:
    """squeue's view (pending/requeued/running, restarts) lands in slurm_state.json; the final
    state stays known after the job has left squeue; status shows attempts with requeues."""
    from mpvgbench.executors.job_view import job_view
    from mpvgbench.executors.slurm import SlurmExecutor, reconcile
    from mpvgbench.rundir import atomic_write_json

    spec, jobs, store, ctx = _setup(fake_slurm, 2)
    ids = SlurmExecutor.from_spec(spec).launch(jobs, store, ctx).external_ids
    a, b = jobs
    squeue = fake_slurm / "squeue.out"

    def view(job: Job) -> tuple[str, int, str]:
        v = job_view(store.runs(keys=[job.key])[0])
        return v.state, v.attempts, v.epoch

    squeue.write_text(f"{ids[a.key]}|PENDING|Priority|0\n{ids[b.key]}|RUNNING|None|0\n")
    assert reconcile(store, store.runs()) == []
    atomic_write_json(ctx.run_dir(b.key) / "progress.json", {"epoch": 3, "epochs": 10, "step": 1})
    assert view(a) == ("pending (Priority)", 1, "") and view(b) == ("running", 1, "3/10")
    squeue.write_text(f"{ids[a.key]}|PENDING|BeginTime|2\n{ids[b.key]}|TIMEOUT|TimeLimit|3\n")
    assert reconcile(store, store.runs()) == ["1 Slurm job(s) left the queue without a result: marked failed"]
    assert view(a) == ("requeued (BeginTime)", 3, "")
    assert view(b) == ("failed (TIMEOUT)", 4, "3/10")
    row = store.runs(keys=[b.key])[0]
    assert row.failure_kind == "timeout" and "ended TIMEOUT" in (row.error or "")
    # seen OUT_OF_MEMORY once (e.g. by `run --wait`); purged from squeue before the next look:
    # still oom, not "lost"
    from mpvgbench.executors.slurm_queue import QueueEntry, record_state

    record_state(ctx.run_dir(a.key), ids[a.key], QueueEntry("OUT_OF_MEMORY", "", 2))
    squeue.write_text("")
    reconcile(store, store.runs())
    row = store.runs(keys=[a.key])[0]
    assert (row.status, row.failure_kind) == ("failed", "oom"), row
    assert "ended OUT_OF_MEMORY" in (row.error or "") and view(a)[0] == "failed (OUT_OF_MEMORY)"


def test_the_submitted_job_records_its_starts_and_signals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit

    from mpvgbench import worker
    from mpvgbench.executors.slurm_job import SlurmJob
    from mpvgbench.executors.slurm_queue import job_record

    monkeypatch.setattr(worker, "_REQUEUED", False)  # checkpoint() sets it; leave the module as found
    monkeypatch.setattr(worker.CheckpointableJob, "__call__", lambda self, run_dir: {"key": "k"})
    for name, value in {"SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "44",
                        "SLURM_RESTART_COUNT": "2", "SLURM_PROCID": "0", "SLURM_CPUS_PER_TASK": "4",
                        "OMP_NUM_THREADS": "4"}.items():
        monkeypatch.setenv(name, value)
    assert SlurmJob()(str(tmp_path)) == {"key": "k"}
    record = job_record(tmp_path)
    assert (record["job_id"], record["restarts"], record["cpus_per_task"], record["threads"]) == ("41_3", 2, "4", "4")
    assert record["signalled_at"] is None
    delayed = SlurmJob().checkpoint(str(tmp_path))
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and type(delayed.function) is SlurmJob
    assert job_record(tmp_path)["signalled_at"] is not None and job_record(tmp_path)["restarts"] == 2
    monkeypatch.setenv("SLURM_PROCID", "1")  # other tasks of the job never write
    (tmp_path / "slurm_job.json").unlink()
    SlurmJob()(str(tmp_path))
    assert job_record(tmp_path) == {}
