"""The PE chain: chaining rules, multi-stage transforms, entry-point parsing, fold."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mpvgbench.methods import resolve_method
from mpvgbench.models.pe import PEBlock, PositionEmbeddingChain, entry_method, fold_last_ln_pe

from .conftest import build_small, randomize_pe_norms, small_input

D = 8


class _Holder(nn.Module):
    def __init__(self, chain: PositionEmbeddingChain) -> None:
        super().__init__()
        self.pe_chain = chain


def _chain(method: Any, depth: int = 4, **kw: Any) -> PositionEmbeddingChain:
    """A chain with random (non-identity) LN' / LN'' affine weights."""
    torch.manual_seed(0)
    chain = PositionEmbeddingChain(resolve_method(method), depth, kw.pop("dim", D), norm_layer=nn.LayerNorm, **kw)
    randomize_pe_norms(_Holder(chain))
    return chain


def _ln(chain: PositionEmbeddingChain, i: int) -> nn.Module:
    norm = chain.norm_for(i)
    assert norm is not None
    return norm


def test_modules_follow_the_method() -> None:
    assert list(_chain("pvg").pe_norms) == ["1", "2", "3"]
    assert list(_chain("lape").pe_norms) == ["0", "1", "2", "3"]
    assert _chain("pvg").last_norm_pe is None and _chain("mpvg").last_norm_pe is not None
    assert _chain("default").is_identity and _chain("gap").is_identity
    assert _chain("pvg").norm_for(0) is None


def test_hierarchical_chain() -> None:
    chain, pos0 = _chain("pvg"), torch.randn(1, 5, D)
    out = chain(pos0)
    assert out.blocks[0] is None and out.last is None
    p1 = _ln(chain, 1)(pos0)
    p2 = _ln(chain, 2)(p1)
    torch.testing.assert_close(out.blocks[1], p1)
    torch.testing.assert_close(out.blocks[2], p2)
    torch.testing.assert_close(out.blocks[3], _ln(chain, 3)(p2))


def test_non_hierarchical_chain() -> None:
    chain, pos0 = _chain({"base": "pvg", "hierarchical": False}), torch.randn(1, 5, D)
    out = chain(pos0)
    for i in (1, 2, 3):
        torch.testing.assert_close(out.blocks[i], _ln(chain, i)(pos0))


@pytest.mark.parametrize("k", [0, 1, 3])
def test_last_ln_term_uses_pos_k(k: int) -> None:
    chain, pos0 = _chain({"base": "mpvg", "last_ln_pe": k}), torch.randn(1, 5, D)
    out = chain(pos0)
    src = pos0 if k == 0 else out.blocks[k]
    assert chain.last_norm_pe is not None
    torch.testing.assert_close(out.last, chain.last_norm_pe(src))


def test_last_ln_pos0_is_raw_even_when_block0_has_ln() -> None:
    chain, pos0 = _chain({"base": "mpvg", "layerwise_from": 0}), torch.randn(1, 5, D)
    out = chain(pos0)
    assert chain.last_norm_pe is not None
    torch.testing.assert_close(out.blocks[0], _ln(chain, 0)(pos0))
    torch.testing.assert_close(out.last, chain.last_norm_pe(pos0))


def test_multi_stage_chain_with_transform() -> None:
    # Swin-like: 2 stages, dims 4 -> 8; the "merge" is a fixed linear map applied to every PE
    merge = nn.Linear(4, 8, bias=False)
    calls: list[int] = []

    def transform(pe: Tensor, stage: int) -> Tensor:
        calls.append(stage)
        return merge(pe)

    pos0 = torch.randn(1, 6, 4)
    kw = dict(dim=[4, 4, 8, 8], stages=[0, 0, 1, 1], last_dim=8)
    for method in ("lape_gap", {"base": "mpvg", "layerwise_from": 0}):
        chain = _chain(method, **kw)
        out = chain(pos0, transform)
        b0 = _ln(chain, 0)(pos0)
        b1 = _ln(chain, 1)(b0)
        b2 = _ln(chain, 2)(merge(b1))
        torch.testing.assert_close(out.blocks[1], b1)
        torch.testing.assert_close(out.blocks[2], b2)
        torch.testing.assert_close(out.blocks[3], _ln(chain, 3)(b2))
        if chain.last_norm_pe is not None:
            torch.testing.assert_close(out.last, chain.last_norm_pe(merge(pos0)))
    chain = _chain({"base": "mpvg", "hierarchical": False, "last_ln_pe": 1}, **kw)
    calls.clear()
    out = chain(pos0, transform)
    torch.testing.assert_close(out.blocks[3], _ln(chain, 3)(merge(pos0)))
    assert chain.last_norm_pe is not None
    torch.testing.assert_close(out.last, chain.last_norm_pe(merge(_ln(chain, 1)(pos0))))
    assert calls == [1, 1]  # pos_0 merged once (shared by blocks 2, 3), pos_1 once for LN''
    with pytest.raises(ValueError, match="transform"):
        chain(pos0)


def test_bad_chain_arguments() -> None:
    pvg = resolve_method("pvg")
    with pytest.raises(ValueError, match="dims and stages"):
        PositionEmbeddingChain(pvg, 4, [8, 8])
    with pytest.raises(ValueError, match="never decrease"):
        PositionEmbeddingChain(pvg, 3, 8, stages=[0, 1, 0])


def test_entry_method_resolves_once_and_checks_depth() -> None:
    method = resolve_method("mpvg")
    assert entry_method(method, 4) is method  # a resolved method passes through untouched
    assert entry_method("mpvg", 4) == method
    with pytest.raises(ValueError, match="allowed: 0..3"):
        entry_method({"base": "mpvg", "last_ln_pe": 4}, 4)
    with pytest.raises(ValueError, match="unknown method"):
        entry_method("mvpg", 4)


def test_pe_block_without_pe_is_timm_block() -> None:
    from timm.models.vision_transformer import Block

    torch.manual_seed(0)
    ours, theirs = PEBlock(D, 2), Block(D, 2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(ours(x), theirs(x))
    pe = torch.randn(1, 5, D)
    seen: list[Tensor] = []
    ours.attn.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    ours(x, pe)
    torch.testing.assert_close(seen[0], ours.norm1(x) + pe)


def test_hooks_on_pe_norms_see_every_eval_forward() -> None:
    model = build_small("deit_tiny", "pvg").eval()
    seen: list[int] = []
    model.pe_chain.pe_norms["3"].register_forward_hook(lambda m, i, o: seen.append(1))
    with torch.no_grad():
        model(small_input("deit_tiny"))
        model(small_input("deit_tiny"))
    assert len(seen) == 2


# ---- fold --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["deit_tiny", "vit_lite_7_4", "vit_micro"])
@pytest.mark.parametrize("method", ["mpvg", "gap_lastln", {"base": "mpvg", "last_ln_pe": 2}])
def test_fold_gives_the_same_logits(name: str, method: Any) -> None:
    model = build_small(name, method).eval()
    randomize_pe_norms(model)
    x = small_input(name, batch=4)
    folded = fold_last_ln_pe(model)
    assert folded is not model and model.pe_chain.last_norm_pe is not None
    assert folded.pe_chain.last_norm_pe is None and folded.pe_chain.folded
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-5)
    assert not any("last_norm_pe" in k for k in folded.state_dict())


def test_fold_without_term_is_a_copy() -> None:
    model = build_small("deit_tiny", "pvg").eval()
    folded = fold_last_ln_pe(model)
    x = small_input("deit_tiny")
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a PE model"):
        fold_last_ln_pe(nn.Linear(2, 2))
