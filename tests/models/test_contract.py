"""Every shipped PE method passes the contract `mpvgbench check-method` runs (models/contract.py)."""

from __future__ import annotations

import pytest

from mpvgbench.models.contract import CONTRACT_MODELS, check_method, claimed_families
from mpvgbench.methods import resolve_method


def test_new_methods_claim_the_families_their_papers_define() -> None:
    for name in ("sincos2d", "peg", "peg_gap"):
        assert claimed_families(resolve_method(name)) == ["micro", "deit", "vit_lite"]
    for name in ("rope_axial", "rope_mixed"):  # RoPE-ViT's RoPE-Swin
        assert claimed_families(resolve_method(name)) == ["micro", "deit", "vit_lite", "swin"]
    assert claimed_families(resolve_method("mpvg")) == list(CONTRACT_MODELS)


@pytest.mark.slow  # torch._dynamo.explain per method: ~10-40 s each on a loaded 2-core machine
@pytest.mark.parametrize("name", ["mpvg", "sincos2d", "rope_axial", "rope_mixed", "peg", "peg_gap"])
def test_shipped_methods_pass_the_contract_on_vit_micro(name: str) -> None:
    seen: list[str] = []
    assert check_method(name, ["micro"], report=seen.append) == []
    expected = {"forward", "params", "compile", "checkpoint", "ddp"} | ({"fold"} if name == "mpvg" else set())
    assert {line.split(": ")[1] for line in seen} == expected


@pytest.mark.slow  # torch._dynamo.explain on Swin (~6 s each here, more on a loaded machine)
@pytest.mark.parametrize("name", ["rope_axial", "rope_mixed"])
def test_rope_passes_the_contract_on_swin(name: str) -> None:
    seen: list[str] = []
    assert check_method(name, ["swin"], report=seen.append) == []
    assert {line.split(": ")[1] for line in seen} == {"forward", "params", "compile", "checkpoint", "ddp"}
