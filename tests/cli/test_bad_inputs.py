"""Every bad input is answered clearly: one ``Error:`` line naming the problem and the fix, exit
code 2, no traceback, and the database and run directories exactly as they were.

The table below drives the CLI in process (CliRunner); ``test_real_process`` repeats a few cases
as ``python -m mpvgbench`` to check the real stderr. The last tests show that specs are data:
YAML tags are refused and no spec value is evaluated, imported, executed or used as a path.
"""

from __future__ import annotations

import copy
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from mpvgbench.store import Store
from mpvgbench.store_schema import SCHEMA_VERSION

from .conftest import (
    cli_env, db_snapshot, fabricate_run, invoke, jobs_of, micro_config, spec_doc, tree_snapshot,
)

BASE = spec_doc("bad")


def doc(**changes: Any) -> dict[str, Any]:
    """BASE with ``changes``; a dotted key sets a nested value, None deletes a key."""
    out = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = out
        for part in parents:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return out


@dataclass
class Case:
    id: str
    setup: Callable[[Path], list[Any]]  # prepares tmp_path, returns the command line
    expect: tuple[str, ...]  # substrings of the error line: the problem and the fix
    usage: bool = False  # a click usage error: "Usage:" and "Try ... -h" lines precede it
    created: tuple[str, ...] = field(default_factory=tuple)  # paths that must still not exist


def spec_case(id: str, content: Any, *expect: str, args: tuple[str, ...] = ()) -> Case:
    def setup(tmp: Path) -> list[Any]:
        path = tmp / "bad.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(yaml.safe_dump(content, sort_keys=False))
        return ["run", path, *args]

    return Case(id, setup, expect)


def cmd_case(id: str, argv: list[Any], *expect: str, usage: bool = False,
             prepare: Callable[[Path], None] | None = None, created: tuple[str, ...] = ()) -> Case:
    def setup(tmp: Path) -> list[Any]:
        if prepare is not None:
            prepare(tmp)
        return [tmp / a[1:] if isinstance(a, str) and a.startswith("@") else a for a in argv]

    return Case(id, setup, expect, usage, created)


# --------------------------------------------------------------------------- the fixtures


def _good_spec(tmp: Path, name: str = "good.yaml", **kw: Any) -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(spec_doc("good", **kw), sort_keys=False))
    return path


def _newer_schema(tmp: Path) -> None:
    with sqlite3.connect(tmp / "results.db") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION + 98),))


def _the_good_job(tmp: Path, status: str) -> Path:
    """good.yaml's job registered (and claimed by a live coordinator elsewhere if running)."""
    (job,) = jobs_of(_good_spec(tmp))
    run_dir = tmp / "runs" / job.key
    run_dir.mkdir(parents=True)
    with Store(tmp / "results.db") as store:
        store.register_jobs([job], "good")
        if status == "running":
            assert store.claim(job.key, "elsewhere:1:x", stale_after_s=120, run_dir=str(run_dir))
    return run_dir


def _corrupt(name: str, content: bytes, status: str = "pending") -> Callable[[Path], None]:
    def prepare(tmp: Path) -> None:
        (_the_good_job(tmp, status) / name).write_bytes(content)

    return prepare


def _truncated_checkpoint(tmp: Path) -> None:
    import torch

    run_dir = _the_good_job(tmp, "pending")
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, run_dir / "checkpoint.pt")
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])


def _two_keys_one_prefix(tmp: Path) -> None:
    seen: dict[str, int] = {}
    with Store(tmp / "results.db") as store:
        for seed in range(100, 200):
            first = micro_config(seed).key()[0]
            if first in seen:
                fabricate_run(store, tmp / "runs", micro_config(seen[first]))
                fabricate_run(store, tmp / "runs", micro_config(seed))
                (tmp / "prefix").write_text(first)
                return
            seen[first] = seed


def _register_pending(tmp: Path) -> None:
    _the_good_job(tmp, "pending")


def _pending_key(tmp: Path) -> str:
    (job,) = jobs_of(_good_spec(tmp))
    return job.key


def _imagefolder_without_train(tmp: Path) -> dict[str, Any]:
    (tmp / "images" / "val").mkdir(parents=True)
    return doc(datasets=["imagefolder"], **{"data.roots.imagefolder": str(tmp / "images"),
                                           "dataset_overrides": {"imagefolder": {"num_classes": 3}}})


def lazy_spec_case(id: str, make: Callable[[Path], Any], *expect: str) -> Case:
    def setup(tmp: Path) -> list[Any]:
        path = tmp / "bad.yaml"
        path.write_text(yaml.safe_dump(make(tmp), sort_keys=False))
        return ["run", path]

    return Case(id, setup, expect)


def _write_good_then(argv: list[Any]) -> Callable[[Path], list[Any]]:
    def setup(tmp: Path) -> list[Any]:
        _good_spec(tmp)
        return [tmp / "good.yaml" if a == "GOOD" else a for a in argv]

    return setup


def _key_of_pending(tmp: Path) -> list[Any]:
    _register_pending(tmp)
    return ["logs", _pending_key(tmp)]


def _analyze_pending(tmp: Path) -> list[Any]:
    _register_pending(tmp)
    return ["analyze", _pending_key(tmp)]


def _ambiguous(tmp: Path) -> list[Any]:
    _two_keys_one_prefix(tmp)
    return ["logs", (tmp / "prefix").read_text()]


# ------------------------------------------------------------------------------- the cases

CASES: list[Case] = [
    # malformed files
    spec_case("yaml_malformed", "name: bad\nmodels: [vit_micro\nmethods: [default]\n", "malformed YAML", "line 3"),
    spec_case("yaml_not_a_mapping", "- vit_micro\n- digits\n", "the top level must be a mapping", "got list"),
    spec_case("yaml_empty", "", "got nothing (empty file)"),
    spec_case("yaml_not_utf8", b"name: bad\nmodels: [\xff\xfe]\n", "not UTF-8 text"),
    spec_case("yaml_duplicate_key", yaml.safe_dump(BASE, sort_keys=False) + "name: again\n", "duplicate key 'name'"),
    spec_case("yaml_python_tag", "name: !!python/object/apply:os.getcwd []\n", "YAML tags are not allowed"),
    # unknown keys at every level
    spec_case("unknown_top_key", doc(modles=["vit_micro"]), "(top level): unknown key 'modles'", "allowed: name, description, models"),
    spec_case("unknown_recipe_key", doc(**{"recipe.epochz": 2}), "recipe: unknown key 'epochz'", "allowed: epochs"),
    spec_case("unknown_executor_key", doc(**{"executor.gpus": 2}), "executor: unknown key 'gpus'", "allowed: name, workers, device"),
    spec_case("unknown_data_key", doc(**{"data.root": "/x"}), "data: unknown key 'root'", "allowed: roots, num_workers, download"),
    spec_case("unknown_data_root", doc(**{"data.roots.cifar10": "/x"}), "data.roots: unknown key 'cifar10'", "allowed: cifar100, imagenet, imagefolder"),
    spec_case("unknown_model_override_key", doc(model_overrides={"vit_micro": {"lr": 1}}), "model_overrides.vit_micro: unknown key 'lr'", "allowed: recipe, img_size, init_from"),
    spec_case("unknown_override_recipe_key", doc(model_overrides={"vit_micro": {"recipe": {"epoch": 1}}}), "model_overrides.vit_micro.recipe: unknown key 'epoch'", "allowed: epochs"),
    spec_case("unknown_dataset_override_key", doc(dataset_overrides={"digits": {"classes": 3}}), "dataset_overrides.digits: unknown key 'classes'", "allowed: num_classes, img_size"),
    spec_case("unknown_results_key", doc(results={"database": "x.db"}), "results: unknown key 'database'", "allowed: db, runs_dir"),
    spec_case("unknown_include_key", doc(include=[{"modle": "vit_micro"}]), "include[0]: unknown key 'modle'", "allowed: model, method, dataset, seed"),
    spec_case("unknown_exclude_key", doc(exclude=[{"seeds": 0}]), "exclude[0]: unknown key 'seeds'", "allowed: model, method, dataset, seed"),
    # unknown names
    spec_case("unknown_model", doc(models=["vit_giant"]), "models[0]: unknown model 'vit_giant'", "allowed: deit_tiny"),
    spec_case("unknown_model_in_overrides", doc(model_overrides={"vit_giant": {}}), "model_overrides", "unknown model 'vit_giant'"),
    spec_case("unknown_method", doc(methods=["pvgg"]), "methods[0]: unknown method 'pvgg'", "presets: default, gap"),
    spec_case("unknown_knob", doc(methods=[{"base": "mpvg", "foo": 1}]), "unknown method knob(s) 'foo'", "allowed: base, pool"),
    spec_case("unknown_dataset", doc(datasets=["mnist"]), "datasets[0]: unknown dataset 'mnist'", "allowed: digits"),
    # wrong types
    spec_case("seed_not_int", doc(seeds=["zero"]), "seeds[0]: input should be a valid integer", "got 'zero'"),
    spec_case("axis_not_a_list", doc(models="vit_micro"), "models: input should be a valid list"),
    spec_case("epochs_not_int", doc(**{"recipe.epochs": "ten"}), "recipe.epochs: input should be a valid integer", "got 'ten'"),
    spec_case("name_not_str", doc(name=123), "name: input should be a valid string"),
    spec_case("knob_wrong_type", doc(methods=[{"base": "gap", "pool": 3}]), "pool must be 'token' or 'avg', got 3"),
    spec_case("device_unknown", doc(**{"executor.device": "tpu"}), "executor.device: input should be 'auto', 'cpu' or 'cuda'"),
    # negative or zero sizes
    spec_case("epochs_negative", doc(**{"recipe.epochs": -1}), "recipe.epochs: input should be greater than 0", "got -1"),
    spec_case("batch_size_zero", doc(**{"recipe.batch_size": 0}), "recipe.batch_size: input should be greater than 0"),
    spec_case("seed_negative", doc(seeds=[-1]), "seeds[0]: input should be greater than or equal to 0"),
    spec_case("workers_zero", doc(**{"executor.workers": 0}), "executor.workers: input should be greater than 0"),
    spec_case("lr_zero", doc(**{"recipe.lr": 0}), "recipe.lr: input should be greater than 0"),
    spec_case("img_size_zero", doc(model_overrides={"vit_micro": {"img_size": 0}}), "model_overrides.vit_micro.img_size: input should be greater than 0"),
    spec_case("num_classes_negative", doc(dataset_overrides={"digits": {"num_classes": -10}}), "dataset_overrides.digits.num_classes: input should be greater than 0"),
    # impossible knob combinations
    spec_case("knob_past_model_depth", doc(methods=[{"base": "mpvg", "last_ln_pe": 9}]), "last_ln_pe=9 is not a PE of this 4-block model", "allowed: 0..3"),
    spec_case("knob_needs_avg_pool", doc(methods=[{"base": "pvg_cls", "last_ln_pe": 0}]), "last_ln_pe needs pool='avg'"),
    spec_case("knob_no_position_info", doc(methods=[{"base": "default", "add_to_input": False}]), "without any position information", "set add_to_input=true or layerwise_from to 0 or 1"),
    spec_case("img_size_not_multiple_of_patch", doc(model_overrides={"vit_micro": {"img_size": 7}}), "must be a multiple of 2", "set model_overrides.vit_micro.img_size or exclude the pair"),
    spec_case("zip_unequal_axes", doc(seeds=[0, 1], zip=[["models", "seeds"]]), "zip[0]: zipped axes need equal lengths", "models has 1, seeds has 2"),
    spec_case("everything_excluded", doc(exclude=[{"model": "vit_micro"}]), "the spec expands to no jobs"),
    # empty axes, duplicates, missing fields
    spec_case("empty_models", doc(models=[]), "models: empty axis; list at least one value"),
    spec_case("empty_seeds", doc(seeds=[]), "seeds: empty axis; list at least one value"),
    spec_case("duplicate_seed", doc(seeds=[0, 1, 0]), "seeds: duplicate value at [0] and [2]"),
    spec_case("duplicate_method_spelling", doc(methods=["mpvg", {"base": "mpvg"}]), "methods: duplicate value at [0] and [1]", "(both are 'mpvg')"),
    spec_case("duplicate_model", doc(models=["vit_micro", "vit_micro"]), "models: duplicate value at [0] and [1]"),
    spec_case("missing_models", doc(models=None), "models: missing; this field is required"),
    spec_case("name_is_a_path", doc(name="../../etc"), "name: string should match pattern", "got '../../etc'"),
    # data roots: refused before anything is stored or started
    spec_case("cifar100_root_unset", doc(datasets=["cifar100"]), "data.roots.cifar100 is not set", "add `data: {roots: {cifar100: /path/to/cifar100}}`"),
    spec_case("cifar100_root_missing", doc(datasets=["cifar100"], **{"data.roots.cifar100": "/nonexistent/cifar"}), "'/nonexistent/cifar' holds no cifar-100-python/train", "or set data.download: true"),
    spec_case("coco_not_deit_tiny", doc(datasets=["coco"]), "vit_micro on coco: dense prediction (ViT-Adapter-Ti) wraps deit_tiny only", "exclude the pair"),
    spec_case("coco_root_without_train2017", doc(models=["deit_tiny"], datasets=["coco"], **{"data.roots.coco": "/"}), "data.roots.coco: '/' has no train2017", "holding train2017/, val2017/ and annotations/"),
    spec_case("ade20k_root_without_ade", doc(models=["deit_tiny"], datasets=["ade20k"], **{"data.roots.ade20k": "/"}), "has no ADEChallengeData2016/images/training", "or the folder holding it"),
    lazy_spec_case("imagefolder_without_train", _imagefolder_without_train, "has no train/ folder", "expected train/<class>/<image>"),
    spec_case("imagefolder_without_num_classes", doc(datasets=["imagefolder"], **{"data.roots.imagefolder": "/x"}), "has no default number of classes", "set dataset_overrides.imagefolder.num_classes"),
    # the spec file itself
    cmd_case("spec_missing", ["run", "@nope.yaml"], "nope.yaml: no such spec file"),
    cmd_case("spec_is_a_directory", ["run", "@runs"], "Invalid value for 'SPEC'", "is a directory", usage=True),
    cmd_case("spec_unreadable", ["run", "/proc/self/mem"], "/proc/self/mem: cannot read spec"),
    cmd_case("spec_below_a_file", ["run", "@afile/spec.yaml"], "cannot read spec: Not a directory",
             prepare=lambda tmp: (tmp / "afile").write_text("x")),
    # the database
    Case("db_newer_schema_run", _write_good_then(["run", "GOOD"]), (f"newer mpvgbench (schema {SCHEMA_VERSION + 98} > {SCHEMA_VERSION})", "upgrade mpvgbench or use another --db")),
    cmd_case("db_newer_schema_status", ["status"], "newer mpvgbench", "upgrade mpvgbench", prepare=_newer_schema),
    cmd_case("db_newer_schema_report", ["report", "--table", "1"], "newer mpvgbench", "upgrade mpvgbench", prepare=_newer_schema),
    Case("db_newer_schema_dry_run", _write_good_then(["run", "GOOD", "--dry-run"]), ("newer mpvgbench", "use another --db")),
    Case("db_not_a_database", _write_good_then(["run", "GOOD", "--db", "afile"]), ("file is not a database", "check the --db path")),
    Case("db_parent_is_a_file", _write_good_then(["run", "GOOD", "--db", "afile/results.db"]), ("a file is in the way", "pass a writable --db")),
    Case("db_unwritable", _write_good_then(["run", "GOOD", "--db", "/proc/mpvgbench-test.db"]), ("unable to open database file", "check the --db path, its permissions")),
    Case("db_unknown_url_scheme", _write_good_then(["run", "GOOD", "--db", "nosuchdb://host/x"]), ("cannot open the results database nosuchdb://host/x", "use a file path or a URL like postgresql")),
    cmd_case("status_without_database", ["status", "--db", "@none.db"], "no results database at", "run `mpvgbench run SPEC` first or pass --db", created=("none.db",)),
    cmd_case("report_without_database", ["report", "--db", "@none.db"], "no results database at", created=("none.db",)),
    # corrupted run directories
    Case("checkpoint_garbage", _write_good_then(["run", "GOOD"]), ("checkpoint.pt is corrupted", "delete it to restart the run from scratch")),
    Case("checkpoint_truncated", _write_good_then(["run", "GOOD"]), ("checkpoint.pt is corrupted", "delete it to restart the run from scratch")),
    Case("result_corrupted_run", _write_good_then(["run", "GOOD"]), ("result.json is corrupted", "delete it to retrain (or resume) the run")),
    # report options
    cmd_case("table_zero", ["report", "--table", "0"], "no paper table '0'", "choose one of 1, 2, 3, 4, 5, 6, fig5"),
    cmd_case("table_seven", ["report", "--table", "7"], "no paper table '7'", "choose one of 1, 2, 3, 4, 5, 6, fig5"),
    cmd_case("table_not_a_number", ["report", "--table", "first"], "no paper table 'first'", "choose one of"),
    cmd_case("format_unknown", ["report", "--format", "xml"], "Invalid value for '--format': 'xml' is not one of 'table', 'markdown', 'latex', 'csv', 'json', 'html'", usage=True),
    cmd_case("metric_unknown", ["report", "--metric", "worst"], "Invalid value for '--metric'", "'final', 'best'", usage=True),
    cmd_case("report_output_unwritable", ["report", "-o", "@no/such/dir/table.md"], "cannot write", "pass a writable -o path"),
    cmd_case("report_bad_spec", ["report", "--spec", "@nope.yaml"], "no such spec file"),
    # run options
    Case("workers_zero_option", _write_good_then(["run", "GOOD", "--workers", "0"]), ("Invalid value for '--workers'", "0 is not in the range x>=1"), usage=True),
    Case("device_option_unknown", _write_good_then(["run", "GOOD", "--device", "tpu"]), ("Invalid value for '--device'", "'tpu' is not one of 'auto', 'cpu', 'cuda'"), usage=True),
    Case("executor_option_unknown", _write_good_then(["run", "GOOD", "--executor", "k8s"]), ("Invalid value for '--executor'", "'k8s' is not one of 'local', 'slurm'"), usage=True),
    # keys
    cmd_case("logs_unknown_key", ["logs", "ffff0000"], "no run with key 'ffff0000'", "`mpvgbench status --all` lists the keys"),
    Case("logs_ambiguous_prefix", _ambiguous, ("is ambiguous (", "give more digits")),
    Case("logs_before_the_run_started", _key_of_pending, ("has no logs yet (status: pending)",)),
    cmd_case("cancel_unknown_key", ["cancel", "ffff0000"], "no run with key 'ffff0000'", "lists the keys"),
    cmd_case("analyze_unknown_key", ["analyze", "ffff0000"], "no run with key 'ffff0000'", "lists the keys"),
    Case("analyze_unfinished_run", _analyze_pending, ("is pending, not finished", "only finished runs can be analyzed")),
]

# cases whose setup needs more than the command line
_PREPARE: dict[str, Callable[[Path], None]] = {
    "db_newer_schema_run": _newer_schema,
    "db_newer_schema_dry_run": _newer_schema,
    "db_not_a_database": lambda tmp: (tmp / "afile").write_text("this is not a database\n" * 10),
    "db_parent_is_a_file": lambda tmp: (tmp / "afile").write_text("x"),
    "checkpoint_garbage": _corrupt("checkpoint.pt", b"PK\x03\x04 not really a zip"),
    "checkpoint_truncated": _truncated_checkpoint,
    "result_corrupted_run": _corrupt("result.json", b"{not json", "running"),
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A results database with one finished run, and its run directory."""
    with Store(tmp_path / "results.db") as store:
        fabricate_run(store, tmp_path / "runs", micro_config(seed=7), top1=55.0, spec_name="base")
    return tmp_path


def test_there_are_at_least_30_cases() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(project: Path, case: Case) -> None:
    tmp = project
    if case.id in _PREPARE:
        _PREPARE[case.id](tmp)
    argv = case.setup(tmp)
    db_before, files_before = db_snapshot(tmp / "results.db"), tree_snapshot(tmp)

    res = invoke(*argv)

    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # no exception escaped
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.output
    if case.usage:
        assert lines[0].startswith("Usage: mpvgbench "), res.output
    else:
        assert lines == errors, res.output  # the whole answer is one line
    for text in case.expect:
        assert text in errors[0], (text, errors[0])
    # nothing was written: not the database, not a run directory, no new file
    assert db_snapshot(tmp / "results.db") == db_before
    assert tree_snapshot(tmp) == files_before
    for name in case.created:
        assert not (tmp / name).exists()


@pytest.mark.parametrize("case_id", ["yaml_malformed", "cifar100_root_unset", "db_newer_schema_status"])
def test_real_process(project: Path, case_id: str) -> None:
    """The same answer from a real process: stderr holds the one line, stdout nothing."""
    case = next(c for c in CASES if c.id == case_id)
    if case.id in _PREPARE:
        _PREPARE[case.id](project)
    argv = [str(a) for a in case.setup(project)]
    done = subprocess.run([sys.executable, "-m", "mpvgbench", *argv], cwd=project, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("Error: ") and all(text in line for text in case.expect), line


# ------------------------------------------------------------------------ safe by construction


@pytest.mark.parametrize("tagged", [
    "!!python/object/apply:os.system ['touch PWNED']",
    "!!python/object/new:subprocess.Popen [['touch', 'PWNED']]",
    "!!python/name:os.system",
    "!!python/module:os",
])
def test_yaml_tags_are_refused_and_never_constructed(tmp_path: Path, tagged: str) -> None:
    spec = tmp_path / "evil.yaml"
    spec.write_text(yaml.safe_dump(BASE, sort_keys=False) + f"description: {tagged}\n")
    Store(tmp_path / "results.db").close()  # so that `cancel` gets as far as reading the spec
    for argv in (["run", spec], ["run", spec, "--dry-run"], ["status", spec], ["cancel", spec]):
        res = invoke(*argv)
        assert res.exit_code == 2, res.output
        assert "YAML tags are not allowed in specs" in res.output
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("changes", [
    {"models": ["__import__('os').system('touch PWNED')"]},
    {"methods": ["exec(\"open('PWNED', 'w')\")"]},
    {"datasets": ["os.path"]},
    {"methods": [{"base": "mpvg", "pool": "__import__('os')"}]},
    {"model_overrides": {"vit_micro": {"init_from": "../../../../etc/passwd"}}},
])
def test_spec_values_are_data_never_code(tmp_path: Path, changes: dict[str, Any]) -> None:
    spec = tmp_path / "evil.yaml"
    spec.write_text(yaml.safe_dump(doc(**changes), sort_keys=False))
    res = invoke("run", spec)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert not (tmp_path / "PWNED").exists()
    assert sorted(os.listdir(tmp_path)) == ["evil.yaml"]


def test_no_spec_value_chooses_a_run_directory(tmp_path: Path) -> None:
    """Strings a spec may hold freely (description, method labels) never become paths; the run
    directory is the job key."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc(description="../../../../tmp/evil", seeds=[0, 1]), sort_keys=False))
    jobs = jobs_of(spec)
    res = invoke("run", spec, "--dry-run")
    assert res.exit_code == 0, res.output
    for job in jobs:
        assert len(job.key) == 16 and set(job.key) <= set("0123456789abcdef")
        assert job.key in res.output
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]


@pytest.mark.parametrize("content", [b'{"key": "x", "final_top1": 7', b"{}", b'"finished"',
                                     b'{"final_top1": NaN, "best_top1": 1}', b'{"final_top1": 1e308, "best_top1": 1}',
                                     b'{"final_top1": 50, "best_top1": 50, "env": "x"}',
                                     b'{"final_top1": 50, "best_top1": 50, "epochs": 1e30}'])
def test_a_damaged_result_is_a_failure_naming_the_file_never_a_result(tmp_path: Path, content: bytes) -> None:
    """status adopts an orphaned run; a result.json that fails the schema is recorded as a failure
    that names the file and the fix, and is never counted (issue: malformed result.json)."""
    import socket

    (job,) = jobs_of(_good_spec(tmp_path))
    run_dir = tmp_path / "runs" / job.key
    run_dir.mkdir(parents=True)
    with Store(tmp_path / "results.db") as store:
        store.register_jobs([job], "good")
        dead = f"{socket.gethostname()}:{2**22 + 7}:x"  # above pid_max: a coordinator that is gone
        assert store.claim(job.key, dead, stale_after_s=120, run_dir=str(run_dir))
    (run_dir / "result.json").write_bytes(content)
    res = invoke("status", "--db", tmp_path / "results.db")
    assert res.exit_code == 0, res.output
    assert "result.json is not a valid result" in res.output and "--retry-failed" in res.output
    report = invoke("report", "--db", tmp_path / "results.db", "--format", "json")
    assert report.exit_code == 0 and "no finished runs" in report.output
