"""Methods as data: presets, overrides, errors, and the parameter counts they imply."""

from __future__ import annotations

import pytest

import mpvgbench.models as M
from mpvgbench.methods import PAPER_PRESETS, PRESETS, PEMethod, canonical_method_dict, method_label, resolve_method

from .conftest import count_params_of

PAPER_COUNTS = {  # methods.md "Parameter counts"; ViT-Lite at 100 classes
    ("deit_tiny", 1000): (5_717_416, 5_722_024, 5_721_256, 5_721_640),
    ("deit_small", 1000): (22_050_664, 22_059_880, 22_058_344, 22_059_112),
    ("deit_base", 1000): (86_567_656, 86_586_088, 86_583_016, 86_584_552),
    ("vit_lite_7_4", 100): (3_740_004, 3_743_588, 3_742_564, 3_743_076),
}


@pytest.mark.parametrize("name,num_classes", list(PAPER_COUNTS))
@pytest.mark.parametrize("idx,method", list(enumerate(["default", "lape", "pvg", "mpvg"])))
def test_paper_parameter_counts(name: str, num_classes: int, idx: int, method: str) -> None:
    assert count_params_of(name, method, num_classes) == PAPER_COUNTS[(name, num_classes)][idx]


@pytest.mark.parametrize(
    "method,expected",
    [
        ("gap", 5_717_032),
        ("gap_lastln", 5_717_416),
        ({"base": "mpvg", "layerwise_from": 0}, 5_722_024),  # Table 6 row 1
        ({"base": "mpvg", "hierarchical": False}, 5_721_640),  # row 2
        ({"base": "mpvg", "add_to_input": False}, 5_721_640),  # row 3
        ({"base": "mpvg", "last_ln_pe": 11}, 5_721_640),  # Table 5
        ({"base": "mpvg", "last_ln_pe": 8}, 5_721_640),
        ({"base": "mpvg", "last_ln_pe": 5}, 5_721_640),
        ({"base": "mpvg", "last_ln_pe": 0}, 5_721_640),
    ],
)
def test_deit_tiny_ablation_counts(method: object, expected: int) -> None:
    assert count_params_of("deit_tiny", method) == expected


def test_presets_match_the_spec_table() -> None:
    t = lambda p, a, lf, h, k: PEMethod(pool=p, add_to_input=a, layerwise_from=lf, hierarchical=h, last_ln_pe=k)  # noqa: E731
    assert {name: PRESETS[name] for name in PAPER_PRESETS} == {
        "default": t("token", True, None, True, None),
        "gap": t("avg", True, None, True, None),
        "gap_lastln": t("avg", True, None, True, 0),
        "lape": t("token", False, 0, True, None),
        "lape_gap": t("avg", False, 0, True, None),
        "pvg_cls": t("token", True, 1, True, None),
        "pvg": t("avg", True, 1, True, None),
        "mpvg": t("avg", True, 1, True, 0),
    }
    for name, preset in PRESETS.items():
        assert resolve_method(name) is preset
        assert method_label(preset) == name


def test_overrides_and_labels() -> None:
    m = resolve_method({"base": "mpvg", "last_ln_pe": 5})
    assert m == PEMethod(pool="avg", add_to_input=True, layerwise_from=1, last_ln_pe=5)
    assert method_label(m) == "mpvg[last_ln_pe=5]"
    assert resolve_method(m) is m
    # hierarchical is meaningless without layer-wise PE: one canonical form, one job key
    assert canonical_method_dict({"base": "gap", "hierarchical": False}) == canonical_method_dict("gap")


@pytest.mark.parametrize(
    "value,needle",
    [
        ("nope", "presets: default"),
        ({"base": "mpvg", "depth": 3}, "allowed: base, pool"),
        ({"pool": "max"}, "'token' or 'avg'"),
        ({"layerwise_from": 2}, "null, 0 or 1"),
        ({"base": "default", "last_ln_pe": 0}, "pool='avg'"),  # class token + Last-LN term
        ({"base": "gap", "last_ln_pe": 3}, "layerwise_from"),
        ({"base": "default", "add_to_input": False}, "position information"),
        ({"base": "mpvg", "last_ln_pe": -1}, ">= 0"),
        (3, "preset name or a mapping"),
    ],
)
def test_impossible_methods_raise(value: object, needle: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        resolve_method(value)  # type: ignore[arg-type]
    assert needle in str(e.value)


@pytest.mark.parametrize(
    "name,method,needle",
    [
        ("deit_tiny", {"base": "mpvg", "last_ln_pe": 12}, "allowed: 0..11"),
        ("vit_lite_7_4", {"base": "mpvg", "last_ln_pe": 11}, "allowed: 0..6"),
        ("vit_micro", {"base": "mpvg", "last_ln_pe": 4}, "allowed: 0..3"),
    ],
)
def test_last_ln_pe_deeper_than_model_fails_at_build(name: str, method: object, needle: str) -> None:
    with pytest.raises(ValueError) as e:
        M.build_model(name, method)
    assert needle in str(e.value)
