"""`mpvgbench recipes`: the resolved recipe, every field and its source, within 80 columns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mpvgbench.config import Recipe
from mpvgbench.matrix import expand
from mpvgbench.spec import load_spec
from tests.cli.conftest import invoke


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def rows(output: str) -> dict[str, str]:
    """field -> the rest of its first line (value and source columns)."""
    out: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0] in Recipe.model_fields:
            out.setdefault(parts[0], parts[1])
    return out


def test_t2t_cifar100_shows_the_sgd_finetune_and_its_groups() -> None:
    res = invoke("recipes", "t2t_vit_7", "cifar100")
    assert res.exit_code == 0, res.output
    assert max(map(len, res.output.splitlines())) <= 80
    got = rows(res.output)
    assert set(got) == set(Recipe.model_fields)  # every field, values never cut
    assert got["optimizer"].split() == ["sgd", "repo", "[1]"]
    assert got["lr"].split() == ["0.05", "paper", "Table", "7"]
    assert got["nesterov"].split()[0] == "false" and got["decay_all_params"].split()[0] == "true"
    for line in ("head.*: lr 0.05 (x1)", "blocks.*: lr 0.0005 (x0.01)",
                 "patch_embed.*: lr 0.0005 (x0.01)", "norm.*: frozen", "cls_token: frozen"):
        assert line in res.output
    assert "[1] yitu-opensource/T2T-ViT transfer_learning.py" in res.output
    assert "…" not in res.output


def test_swin_names_both_original_files_and_defaults() -> None:
    res = invoke("recipes", "swin_tiny")  # dataset: imagenet
    assert res.exit_code == 0, res.output
    got = rows(res.output)
    assert got["warmup_lr"].split()[:2] == ["1e-06", "repo"] and got["min_lr"].split()[0] == "1e-05"
    assert "default (DeiT's recipe)" in got["mixup"]
    assert "microsoft/Swin-Transformer config.py + main.py" in res.output
    assert "swin_tiny_patch4_window7_224.yaml" in res.output
    assert max(map(len, res.output.splitlines())) <= 80


def test_spec_overrides_are_shown_and_match_what_run_trains(tmp_path: Path) -> None:
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "s", "models": ["t2t_vit_7"], "methods": ["mpvg"], "datasets": ["cifar100"],
        "recipe": {"epochs": 30},
        "model_overrides": {"t2t_vit_7": {"recipe": {"lr": 0.01, "param_groups": None}}},
    }))
    res = invoke("recipes", "t2t_vit_7", "cifar100", "--spec", spec_path)
    assert res.exit_code == 0, res.output
    got = rows(res.output)
    assert got["epochs"].split() == ["30", "spec", "s:", "recipe"]
    assert got["lr"].split() == ["0.01", "spec", "s:", "model_overrides"]
    assert got["param_groups"].startswith("null (every parameter at lr)")
    assert got["optimizer"].split()[0] == "sgd"  # not overridden: the family default
    (job,) = expand(load_spec(spec_path))
    recipe = job.config.recipe
    assert (recipe.epochs, recipe.lr, recipe.param_groups, recipe.optimizer) == (30, 0.01, None, "sgd")


def test_summary_and_user_errors() -> None:
    res = invoke("recipes")
    assert res.exit_code == 0, res.output
    assert "sgd+groups" in res.output and "vit_lite_7_4" in res.output
    assert max(map(len, res.output.splitlines())) <= 80
    bad = invoke("recipes", "resnet50")
    assert bad.exit_code == 2 and "unknown model 'resnet50'" in bad.output
    bad = invoke("recipes", "deit_tiny", "mnist")
    assert bad.exit_code == 2 and "unknown dataset 'mnist'" in bad.output
    bad = invoke("recipes", "--spec", "nope.yaml")
    assert bad.exit_code == 2
