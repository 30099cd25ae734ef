"""Shared helpers for the model tests: small inputs, parameter counts, PE-module access."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import mpvgbench.models as M

# Small image sizes so a forward pass costs milliseconds (DeiT: 32 px / patch 16 -> 4 tokens).
SMALL_IMG: dict[str, int] = {
    "deit_tiny": 32,
    "deit_small": 32,
    "deit_base": 32,
    "vit_lite_7_4": 16,
    "vit_micro": 8,
}
IN_CHANS: dict[str, int] = {"vit_micro": 1}
OUR_MODELS = list(SMALL_IMG)

PRESET_NAMES = ["default", "gap", "gap_lastln", "lape", "lape_gap", "pvg_cls", "pvg", "mpvg"]


def count_params(model: nn.Module) -> int:
    """All parameters, frozen ones too (the paper's counts)."""
    return sum(p.numel() for p in model.parameters())


def count_params_of(name: str, method: Any, num_classes: int = 1000, **kw: Any) -> int:
    """Parameter count at the model's default size, built on the meta device (no init cost)."""
    with torch.device("meta"):
        model = M.build_model(name, method, num_classes=num_classes, **kw)
    return count_params(model)


def build_small(name: str, method: Any, num_classes: int = 10, seed: int = 0, **kw: Any) -> nn.Module:
    torch.manual_seed(seed)
    return M.build_model(name, method, num_classes=num_classes, img_size=SMALL_IMG[name], **kw)


def small_input(name: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = SMALL_IMG[name]
    return torch.randn(batch, IN_CHANS.get(name, 3), size, size, generator=g)


def randomize_pe_norms(model: nn.Module, seed: int = 3) -> None:
    """Give every LN' / LN'' non-trivial affine weights (init is 1/0, which hides mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.pe_chain.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.ndim == 1 else 0.0))


@pytest.fixture
def tiny_input() -> torch.Tensor:
    return small_input("deit_tiny")


def share_pvg_weights(pvg: nn.Module, mpvg: nn.Module) -> None:
    """Give ``mpvg`` every weight of ``pvg``; only LN'' stays its own (randomised, non-trivial)."""
    missing, unexpected = mpvg.load_state_dict(pvg.state_dict(), strict=False)
    assert sorted(missing) == ["pe_chain.last_norm_pe.bias", "pe_chain.last_norm_pe.weight"] and not unexpected
    randomize_pe_norms(mpvg)  # LN'' non-trivial; LN' now differ from PVG's, so copy them back
    mpvg.pe_chain.pe_norms.load_state_dict(pvg.pe_chain.pe_norms.state_dict())


def assert_mpvg_minus_pvg_is_input_free(pvg: nn.Module, mpvg: nn.Module, x: torch.Tensor) -> None:
    """The methods.md invariant: with shared weights, MPVG(x) - PVG(x) is one vector for all x."""
    with torch.no_grad():
        diff = mpvg(x) - pvg(x)
    assert diff.abs().max() > 1e-3  # the term is not zero ...
    torch.testing.assert_close(diff, diff[:1].expand_as(diff), rtol=0, atol=1e-5)  # ... and input-free


def assert_trains(model: nn.Module, x: torch.Tensor, pe: torch.Tensor | None) -> None:
    """One forward/backward: finite logits of shape (batch, 10), gradients reach the raw PE
    ``pe`` (None: a fixed PE that must get none), every LN'/LN'' and every trainable parameter."""
    out = model(x)
    assert out.shape == (x.shape[0], 10) and torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    if pe is None:
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    else:
        assert pe.grad is not None and pe.grad.abs().sum() > 0
    for pname, p in model.pe_chain.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if pname.endswith("weight"):
            assert p.grad.abs().sum() > 0, pname
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
