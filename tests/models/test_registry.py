"""The registry: short names, families, timm registration."""

from __future__ import annotations

import pytest
import timm
import torch

import mpvgbench.models as M
from mpvgbench.methods import resolve_method

from .conftest import OUR_MODELS, count_params


def test_short_names_and_metadata() -> None:
    assert M.list_models() == [
        "deit_tiny", "deit_small", "deit_base", "swin_tiny", "ceit_tiny", "t2t_vit_7", "vit_lite_7_4", "vit_micro",
    ]
    families = {n: M.model_family(n) for n in M.list_models()}
    assert set(families.values()) == {"deit", "swin", "ceit", "t2t", "vit_lite", "micro"}
    assert families["vit_lite_7_4"] == "vit_lite" and families["t2t_vit_7"] == "t2t"
    assert M.default_img_size("deit_tiny") == 224 and M.default_img_size("vit_lite_7_4") == 32
    assert M.default_img_size("vit_micro") == 8
    assert [M.model_depth(n) for n in ("deit_base", "swin_tiny", "t2t_vit_7", "vit_lite_7_4")] == [12, 12, 7, 7]


@pytest.mark.parametrize("fn", [M.model_family, M.default_img_size, M.model_depth, M.timm_name])
def test_unknown_name_lists_allowed(fn: object) -> None:
    with pytest.raises(ValueError, match="allowed: deit_tiny, deit_small"):
        fn("resnet50")  # type: ignore[operator]
    with pytest.raises(ValueError, match="unknown model 'vit_huge'"):
        M.build_model("vit_huge", "mpvg")


def test_timm_registration() -> None:
    names = set(timm.list_models("mpvg_*"))
    assert {M.timm_name(short) for short in M.list_models()} == names


@pytest.mark.parametrize("timm_name", sorted(timm.list_models("mpvg_*")))
def test_timm_create_model_every_registered_name(timm_name: str) -> None:
    for method in ("default", "mpvg"):
        with torch.device("meta"):  # full size (DeiT-B: 86M parameters), shapes only
            model = timm.create_model(timm_name, pretrained=False, pe_method=method)
        assert isinstance(model.pe_chain, M.PositionEmbeddingChain)  # a family may adapt the method (Swin)
        assert (model.pe_chain.last_norm_pe is not None) == (resolve_method(method).last_ln_pe is not None)
        assert count_params(model) > 0


@pytest.mark.parametrize("timm_name", sorted(M.timm_name(n) for n in OUR_MODELS))
def test_no_pretrained_weights(timm_name: str) -> None:
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(timm_name, pretrained=True, pe_method="mpvg")


def test_build_model_passes_options() -> None:
    model = M.build_model("vit_micro", "pvg", num_classes=10, drop_path_rate=0.2)
    assert model.patch_embed.proj.in_channels == 1 and model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    rgb = M.build_model("vit_micro", "pvg", num_classes=3, in_chans=3, img_size=16)
    assert rgb(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    deit = M.build_model("deit_tiny", {"base": "mpvg", "last_ln_pe": 5}, num_classes=5, img_size=64)
    assert deit.pos_embed.shape == (1, 16, 192) and deit.pe_method.last_ln_pe == 5
    with pytest.raises(ValueError, match="unknown method"):
        M.build_model("deit_tiny", "mvpg")


def test_build_model_for_config_matches_the_data() -> None:
    from types import SimpleNamespace

    from mpvgbench.config import TrainConfig
    from mpvgbench.methods import canonical_method_dict

    # today's TrainConfig carries the method as a knob dict; digits images have one channel
    config = TrainConfig(model="vit_micro", method=canonical_method_dict("mpvg"), dataset="digits",
                         img_size=8, num_classes=10)
    model = M.build_model_for_config(config, drop_path_rate=0.1)
    assert model.pe_method == resolve_method("mpvg")
    assert model.patch_embed.proj.in_channels == 1 and model.num_classes == 10
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    # main's TrainConfig will carry a PEMethod: accepted as is (duck-typed config here)
    pvg = resolve_method("pvg")
    config2 = SimpleNamespace(model="deit_tiny", method=pvg, dataset="synthetic", img_size=32, num_classes=5)
    model2 = M.build_model_for_config(config2)
    assert model2.pe_method is pvg and model2.patch_embed.proj.in_channels == 3 and model2.num_classes == 5


def test_count_params_on_the_meta_device_is_exact() -> None:
    # the integers tests/models/test_methods.py pins (methods.md), from shapes alone
    assert M.count_params("deit_base", "mpvg") == 86_584_552
    assert M.count_params("vit_lite_7_4", "lape", num_classes=100) == 3_743_588
    # counting built nothing real: a model built afterwards has real weights
    assert M.build_model("vit_micro", "pvg", num_classes=10).pos_embed.device.type == "cpu"


def test_models_params_command_prints_the_exact_counts() -> None:
    from click.testing import CliRunner

    from mpvgbench.cli import cli

    result = CliRunner().invoke(cli, ["models", "--params"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    deit_tiny = next(line for line in result.output.splitlines() if "deit_tiny" in line)
    for count in ("5,717,416", "5,722,024", "5,721,256", "5,721,640"):  # default, lape, pvg, mpvg
        assert count in deit_tiny
    assert "86,584,552" in result.output  # DeiT-B MPVG
    assert "28,073,312" in result.output and "36,067,228" in result.output  # ViT-Adapter-Ti, MPVG
