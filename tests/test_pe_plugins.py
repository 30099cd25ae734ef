"""The README's "add your own method" walk-through, as written: a plugin file and a spec that
names it; its identity in the job key; `methods`, `check-method`; a plugin that raises."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mpvgbench import pe_plugins
from mpvgbench.errors import MethodError, MpvgbenchError
from mpvgbench.matrix import expand
from mpvgbench.methods import ENCODINGS, PRESETS, resolve_method
from mpvgbench.pe_plugins import ENV_VAR
from mpvgbench.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README.split("## Add your own position-embedding method", 1)[1].split("\n## ", 1)[0]
PLUGIN = re.findall(r"```py\n(.*?)```", SECTION, flags=re.S)[0]
SPEC = re.findall(r"```yaml\n(.*?)```", SECTION, flags=re.S)[0]


@pytest.fixture(autouse=True)
def registry_restored() -> Iterator[None]:
    """A plugin registers into process-wide tables: leave them as they were for other tests."""
    encodings, presets = dict(ENCODINGS), dict(PRESETS)
    yield
    ENCODINGS.clear(), ENCODINGS.update(encodings)
    PRESETS.clear(), PRESETS.update(presets)


@pytest.fixture
def walkthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_pe.py").write_text(PLUGIN)
    (tmp_path / "my_pe.yaml").write_text(SPEC)
    monkeypatch.setenv(ENV_VAR, "")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", ENV_VAR: ""}
    return subprocess.run([sys.executable, "-m", "mpvgbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_spec_names_the_plugin_and_its_source_hash_is_in_the_key(walkthrough: Path) -> None:
    jobs = expand(load_spec(walkthrough / "my_pe.yaml"))
    plugin_jobs = [j for j in jobs if j.method.encoding == "axial_learned"]
    assert len(plugin_jobs) == 6 and all(j.method.plugin.startswith("my_pe:") for j in plugin_jobs)
    assert '"plugin":"my_pe:' in plugin_jobs[0].config.model_dump_json().replace(" ", "")
    default_keys = {j.key for j in jobs if j.method.encoding == "learned"}
    (walkthrough / "my_pe.py").write_text(PLUGIN + "\n# an edit\n")
    again = expand(load_spec(walkthrough / "my_pe.yaml"))
    assert {j.key for j in again if j.method.encoding == "learned"} == default_keys
    assert not {j.key for j in again if j.method.encoding == "axial_learned"} & {j.key for j in plugin_jobs}


@pytest.mark.slow  # ~40 s here: torch.compile's explain on a loaded 2-core machine
def test_methods_lists_it_and_check_method_passes(walkthrough: Path) -> None:
    listed = _cli("methods", "--plugin", "my_pe.py", cwd=walkthrough)
    assert listed.returncode == 0 and "axial_learned" in listed.stdout and "my_pe:" in listed.stdout
    checked = _cli("check-method", "axial_learned", "--plugin", "my_pe.py", "--family", "micro", cwd=walkthrough)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "all checks passed (micro)" in checked.stdout


@pytest.mark.slow
def test_check_method_prints_each_failure_on_one_line(walkthrough: Path) -> None:
    broken = PLUGIN.replace("return (context.grid[0] + context.grid[1]) * context.dim", "return 1")
    (walkthrough / "my_pe.py").write_text(broken)
    done = _cli("check-method", "axial_learned", "--plugin", "my_pe.py", "--family", "micro", cwd=walkthrough)
    assert done.returncode == 1
    assert "FAIL micro: params: 512 parameters, declared 1" in done.stdout


def test_a_plugin_that_raises_is_one_line_and_exit_2(walkthrough: Path) -> None:
    (walkthrough / "bad_pe.py").write_text("raise RuntimeError('no GPU here')\n")
    done = _cli("methods", "--plugin", "bad_pe.py", cwd=walkthrough)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["Error: plugin bad_pe.py: RuntimeError: no GPU here"]


@pytest.mark.slow
def test_the_walkthrough_trains_and_reports(walkthrough: Path) -> None:
    # the local executor: the worker process finds the plugin through the environment
    done = _cli("run", "my_pe.yaml", "--set", "recipe.epochs=1", "--set", "seeds=[0]",
                cwd=walkthrough)
    assert done.returncode == 0, done.stderr[-2000:]
    # the report selects the runs `run` made with the same overrides (job keys)
    report = _cli("report", "my_pe.yaml", "--set", "recipe.epochs=1", "--set", "seeds=[0]", cwd=walkthrough)
    assert report.returncode == 0 and "axial_learned" in report.stdout


def test_a_job_recorded_with_another_version_of_the_plugin_is_refused(walkthrough: Path) -> None:
    import mpvgbench.models as M

    load_spec(walkthrough / "my_pe.yaml")
    stale = dataclasses.replace(resolve_method("axial_learned"), plugin="my_pe:0000000000000000")
    with pytest.raises(MethodError, match="the plugin changed; rerun the spec"):
        M.build_model("vit_micro", stale, num_classes=10)
    assert M.build_model("vit_micro", "axial_learned", num_classes=10)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_a_missing_plugin_file_is_one_line(walkthrough: Path) -> None:
    (walkthrough / "spec.yaml").write_text(SPEC.replace("my_pe.py", "nope.py"))
    with pytest.raises(MpvgbenchError, match=r"^plugin .*nope.py: no such file$"):
        load_spec(walkthrough / "spec.yaml")


def test_an_installed_entry_point_registers_its_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ep_pe.py").write_text(PLUGIN.replace('@register_pe_method("axial_learned", families=("micro", '
                                                      '"deit", "vit_lite"), add_to_input=False)\n', ""))
    monkeypatch.syspath_prepend(str(tmp_path))
    point = SimpleNamespace(name="ep_axial", value="ep_pe:AxialLearned",
                            load=lambda: importlib.import_module("ep_pe").AxialLearned)
    monkeypatch.setattr(pe_plugins, "entry_points", lambda group: [point] if group == "mpvgbench.pe_methods" else [])
    monkeypatch.setattr(pe_plugins, "_entry_points_loaded", False)
    monkeypatch.setenv(ENV_VAR, "")
    method = resolve_method("ep_axial")  # an unknown name loads the installed entry points
    assert method.encoding == "ep_axial" and method.plugin.startswith("ep_pe:")
    assert ENCODINGS["ep_axial"].source.endswith("ep_pe.py")


def test_a_plugins_field_that_is_not_a_list_of_paths_is_one_line(walkthrough: Path) -> None:
    (walkthrough / "spec.yaml").write_text(SPEC.replace("plugins: [my_pe.py]", "plugins: my_pe.py"))
    with pytest.raises(MpvgbenchError, match=r"plugins: must be a list of Python file paths"):
        load_spec(walkthrough / "spec.yaml")
