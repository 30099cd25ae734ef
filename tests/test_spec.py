"""Spec loading and validation: every problem is a one-line SpecError naming file and field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from mpvgbench.matrix import expand
from mpvgbench.methods import parse_method_label
from mpvgbench.slurm_settings import SlurmSettings
from mpvgbench.spec import SpecError, load_spec, parse_spec

EXPERIMENTS = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.yaml"))
GOOD = """\
name: t
models: [deit_tiny]
methods: [mpvg]
datasets: [imagenet]
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_loads_and_expands(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    jobs = expand(spec)
    assert jobs and len({j.key for j in jobs}) == len(jobs)
    assert expand(spec, smoke=True)


def test_experiments_exist() -> None:
    names = {p.stem for p in EXPERIMENTS}
    assert {"quickstart", "table1", "table2", "table5", "table6"} <= names


def test_minimal_spec_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.seeds == [0] and spec.executor.name == "local" and spec.data.download is False
    assert spec.source.endswith("spec.yaml")
    assert spec.data_root("imagenet") is None


def test_data_root_expands_user(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD + "data: {roots: {imagenet: ~/in1k}}\n"))
    assert spec.data_root("imagenet") == str(Path("~/in1k").expanduser())


def test_method_labels_are_accepted_as_method_names(tmp_path: Path) -> None:
    assert parse_method_label("mpvg[last_ln_pe=5,hierarchical=false]") == {
        "base": "mpvg", "last_ln_pe": 5, "hierarchical": False,
    }
    spec = load_spec(write(tmp_path, GOOD.replace("[mpvg]", "['mpvg[last_ln_pe=5]']")))
    assert expand(spec)[0].method_label == "mpvg[last_ln_pe=5]"


# (spec text, field that the message must name, words the message must contain)
BAD_SPECS: list[tuple[str, str, str]] = [
    (GOOD.replace("[mpvg]", "[default, gap, mpgv]"), "methods[2]", "unknown method 'mpgv'; presets: default"),
    (GOOD.replace("[mpvg]", "[{base: mpvg, last_ln: 3}]"), "methods[0]", "unknown method knob"),
    (GOOD.replace("[mpvg]", "[{base: mpvg, last_ln_pe: x}]"), "methods[0]", "last_ln_pe"),
    (GOOD.replace("[mpvg]", "[{base: nope}]"), "methods[0]", "unknown method 'nope'"),
    (GOOD.replace("[mpvg]", "[{pool: token, last_ln_pe: 0}]"), "methods[0]", "pool='avg'"),
    (GOOD.replace("[mpvg]", "[gap, {base: mpvg, last_ln_pe: 12}]"), "methods[1]", "last_ln_pe=12"),
    (GOOD.replace("[deit_tiny]", "[t2t_vit_7]").replace("[mpvg]", "[{base: mpvg, last_ln_pe: 8}]"),
     "methods[0]", "7-block"),
    (GOOD + "include: [{model: t2t_vit_7, method: {base: mpvg, last_ln_pe: 9}}]\n", "include[0].method", "allowed: 0..6"),
    (GOOD.replace("[mpvg]", "[mpvg, {base: mpvg, last_ln_pe: 0}]"), "methods", "duplicate"),
    (GOOD.replace("[mpvg]", "[3]"), "methods[0]", "preset name or a mapping"),
    (GOOD.replace("[deit_tiny]", "[deit_tny]"), "models[0]", "unknown model 'deit_tny'; allowed:"),
    (GOOD.replace("[deit_tiny]", "[deit_tiny, deit_tiny]"), "models", "duplicate"),
    (GOOD.replace("[deit_tiny]", "[]"), "models", "empty axis"),
    (GOOD.replace("[deit_tiny]", "deit_tiny"), "models", "valid list"),
    (GOOD.replace("[imagenet]", "[imagenett]"), "datasets[0]", "unknown dataset 'imagenett'"),
    (GOOD.replace("[imagenet]", "[imagefolder]"), "datasets", "dataset_overrides.imagefolder.num_classes"),
    (GOOD.replace("[imagenet]", "[digits]"), "model_overrides.deit_tiny.img_size", "multiple of 16"),
    (GOOD + "seeds: [0, -1]\n", "seeds[1]", "greater than or equal to 0"),
    (GOOD + "seeds: ['0']\n", "seeds[0]", "valid integer"),
    (GOOD + "seeds: [1, 1]\n", "seeds", "duplicate"),
    (GOOD + "seed: [1]\n", "(top level)", "unknown key 'seed'; allowed: name"),
    (GOOD.replace("name: t", "name: '../evil'"), "name", "pattern"),
    (GOOD.replace("name: t\n", ""), "name", "required"),
    (GOOD + "recipe: {epochs: 0}\n", "recipe.epochs", "greater than 0"),
    (GOOD + "recipe: {lrr: 0.1}\n", "recipe", "unknown key 'lrr'; allowed: epochs"),
    (GOOD + "recipe: {optimizer: adamax}\n", "recipe.optimizer", "'adamw'"),
    (GOOD + "recipe: [1]\n", "recipe", "valid dictionary"),
    (GOOD + "model_overrides: {deit_tiny: {img_size: -32}}\n", "model_overrides.deit_tiny.img_size", "greater than 0"),
    (GOOD + "model_overrides: {deit_tny: {img_size: 32}}\n", "model_overrides.deit_tny", "unknown model"),
    (GOOD + "model_overrides: {deit_tiny: {epochs: 3}}\n", "model_overrides.deit_tiny", "unknown key 'epochs'"),
    (GOOD + "model_overrides: {deit_tiny: {init_from: abc}}\n", "model_overrides.deit_tiny.init_from", "pattern"),
    (GOOD + "model_overrides: {deit_tiny: {init_from: {dataset: imagenet, seed: 1}}}\n",
     "model_overrides.deit_tiny.init_from", "unknown key 'seed'"),
    (GOOD + "data: {roots: {cifar10: /x}}\n", "data.roots", "unknown key 'cifar10'; allowed: cifar100"),
    (GOOD + "data: {num_workers: -1}\n", "data.num_workers", "greater than or equal to 0"),
    (GOOD + "executor: {name: kubernetes}\n", "executor.name", "'local' or 'slurm'"),
    (GOOD + "executor: {workers: 0}\n", "executor.workers", "greater than 0"),
    (GOOD + "executor: {device: tpu}\n", "executor.device", "'auto'"),
    (GOOD + "results: {database: x}\n", "results", "unknown key 'database'"),
    (GOOD + "zip: [[models]]\n", "zip[0]", "at least 2 axes"),
    (GOOD + "zip: [[models, colours]]\n", "zip[0][1]", "'models'"),
    (GOOD.replace("[imagenet]", "[imagenet, cifar100]") + "zip: [[models, datasets]]\n", "zip[0]", "equal lengths"),
    (GOOD + "zip: [[models, seeds], [seeds, methods]]\n", "zip[1]", "already in zip[0]"),
    (GOOD + "include: [{}]\n", "include[0]", "empty pattern"),
    (GOOD + "include: [{model: vit_micro, datset: digits}]\n", "include[0]", "unknown key 'datset'"),
    (GOOD + "include: [{model: deit_tiny, method: mpgv}]\n", "include[0].method", "unknown method"),
    (GOOD + "exclude: [{seed: x}]\n", "exclude[0].seed", "valid integer"),
    (GOOD + "exclude: [{model: deit_tiny}]\n", "exclude", "no jobs"),
    (GOOD + "slurm: [1, 2]\n", "slurm", "valid dictionary"),
    # recipe sweeps (mpvgbench.spec_sweep): the path and each value as `--set recipe.F=V` reads them
    (GOOD + "sweep: {recipe.lrr: [1e-3]}\n", "sweep.recipe.lrr", "unknown recipe field 'lrr'; allowed: epochs"),
    (GOOD + "sweep: {img_size: [32]}\n", "sweep.img_size", "a swept field is recipe.FIELD"),
    (GOOD + "sweep: {recipe.lr: []}\n", "sweep.recipe.lr", "empty sweep"),
    (GOOD + "sweep: {recipe.lr: 1e-3}\n", "sweep.recipe.lr", "valid list"),
    (GOOD + "sweep: {recipe.lr: [1e-3, -1]}\n", "sweep.recipe.lr[1]", "greater than 0; got -1"),
    (GOOD + "sweep: {recipe.optimizer: [adamw, adamax]}\n", "sweep.recipe.optimizer[1]", "'adamw'"),
    (GOOD + "sweep: {recipe.lr: [1e-3, 0.001]}\n", "sweep.recipe.lr[1]", "duplicate value 0.001"),
    (GOOD + "sweep: [recipe.lr]\n", "sweep", "valid dictionary"),
    (GOOD + "sweep: {recipe.lr: [1e-3, 2e-3]}\nmodel_overrides: {deit_tiny: {img_size: 224, recipe: {lr: 0.1}}}\n",
     "model_overrides.deit_tiny.recipe.lr", "also swept by sweep.recipe.lr"),
]


@pytest.mark.parametrize("text,field,words", BAD_SPECS, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_SPECS)])
def test_bad_spec_is_one_line_error_naming_the_field(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        expand(load_spec(path))  # field checks at load, cell checks (depth, sizes) at expansion
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: "), message
    assert words in message, message


def test_bad_spec_table_is_large_enough() -> None:
    assert len(BAD_SPECS) >= 20


@pytest.mark.parametrize(
    "text,words",
    [
        ("name: t\nmodels: [deit_tiny\n", "line 3"),  # unclosed flow sequence
        ("name: t\n  models: x\n", "line 2"),
        ("name: t\nname: u\nmodels: [deit_tiny]\n", "line 2, column 1: malformed YAML: duplicate key 'name'"),
        ("!!python/object/apply:os.system ['echo hi']\n", "YAML tags are not allowed"),
        ("name: !!python/name:os.system\n", "YAML tags are not allowed"),
    ],
)
def test_malformed_yaml(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert words in str(info.value)


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    text = GOOD.replace("[deit_tiny]", "[deit_tiny, deit_small]") + textwrap.dedent("""\
        recipe: &short {epochs: 5, warmup_epochs: 1}
        model_overrides:
          deit_small: {recipe: {<<: *short, epochs: 6}}
        """)
    tiny, small = expand(load_spec(write(tmp_path, text)))
    assert (tiny.config.recipe.epochs, small.config.recipe.epochs) == (5, 6)
    assert small.config.recipe.warmup_epochs == 1


def test_yaml_tags_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SpecError):
        load_spec(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text,words",
    [("", "got nothing (empty file)"), ("- a\n- b\n", "got list"), ("just text\n", "got str")],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match="top level must be a mapping") as info:
        load_spec(path)
    assert words in str(info.value)


def test_missing_unreadable_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(binary)


def test_slurm_section_is_a_nested_settings_model(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD + "slurm: {partition: gpu, mem: 1g}\n"))
    assert isinstance(spec.slurm, SlurmSettings)
    assert spec.slurm.partition == "gpu" and spec.slurm.mem == "1G"
    assert spec.slurm.model_fields_set == {"partition", "mem"}
    with pytest.raises(SpecError, match=r"spec\.yaml: slurm: unknown key 'partiton'; allowed: partition"):
        load_spec(write(tmp_path, GOOD + "slurm: {partiton: gpu}\n"))
    with pytest.raises(SpecError, match=r"spec\.yaml: slurm\.time: time 'soon' is not minutes"):
        load_spec(write(tmp_path, GOOD + "slurm: {time: soon}\n"))


def test_spec_module_imports_no_executor() -> None:
    """spec -> matrix -> executor: validating a spec never imports an executor (or torch)."""
    code = ("import sys, mpvgbench.spec, mpvgbench.matrix; "
            "bad = [m for m in sys.modules if m.startswith(('mpvgbench.executors', 'torch', 'submitit'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_parse_spec_accepts_plain_data() -> None:
    spec = parse_spec({"name": "p", "models": ["vit_micro"], "methods": ["gap"], "datasets": ["digits"]})
    assert spec.source == "<spec>"
    with pytest.raises(SpecError, match=r"^<spec>: models\[0\]: unknown model"):
        parse_spec({"name": "p", "models": ["x"], "methods": ["gap"], "datasets": ["digits"]})


def test_spec_is_frozen(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]
