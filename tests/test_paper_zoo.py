"""The zoo's paper column: every value transcribed here with where it was read; nothing else filled.

- this paper (Lee, Ham, Kim, AAAI 2025): Table 1 (ImageNet: DeiT-Ti 72.14 / MPVG 73.51, DeiT-S
  79.81 / 80.61) and Table 2 (CIFAR-100: ViT-Lite-7/4 74.90 / 76.87);
- RoPE-ViT (Heo et al., arXiv 2403.13298): the naver-ai/rope-vit README, table "DeiT-III (400
  epochs)", column Top-1 (224x224): rope_axial_deit_small_patch16_LS 80.9,
  rope_mixed_deit_small_patch16_LS 80.9 (DeiT-III recipe with LayerScale, not ours);
- CPVT (arXiv 2102.10882) and MAE's sin-cos: no table for these backbones was found: blank.
"""

from __future__ import annotations

from mpvgbench.paper import TABLES, ZOO, get_table

EXPECTED = {
    ("deit_tiny", "default"): 72.14, ("deit_tiny", "mpvg"): 73.51,
    ("deit_small", "default"): 79.81, ("deit_small", "mpvg"): 80.61,
    ("deit_small", "rope_axial"): 80.9, ("deit_small", "rope_mixed"): 80.9,
    ("vit_lite_7_4", "default"): 74.90, ("vit_lite_7_4", "mpvg"): 76.87,
}


def test_zoo_values_are_the_cited_ones_and_blank_elsewhere() -> None:
    filled = {(row.model, row.method): row.values["top1"] for row in ZOO.rows if row.values}
    assert filled == EXPECTED
    for row in ZOO.rows:
        assert bool(row.source) == bool(row.values)  # a value always says where it was read
        if row.method.startswith("rope") and row.values:
            assert "2403.13298" in row.source and "DeiT-III" in row.source
    assert len(ZOO.rows) == 3 * 7 and get_table("zoo") is ZOO and "zoo" not in TABLES


def test_this_papers_zoo_values_agree_with_tables_1_and_2() -> None:
    for row in ZOO.rows:
        if row.method in ("default", "mpvg"):
            table = TABLES[1] if row.dataset == "imagenet" else TABLES[2]
            (same,) = [r for r in table.rows if (r.model, r.dataset, r.method) == (row.model, row.dataset, row.method)]
            assert same.values == row.values
