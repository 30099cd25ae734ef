"""ViT-Adapter around our DeiT: PE delivery, window attention, layer scale, checkpoint loading, shapes."""

from __future__ import annotations

import pytest
import torch
from timm.layers import LayerScale

from mpvgbench.downstream.adapter import DETECTION_WINDOWS, build_vit_adapter, interaction_indexes_for
from mpvgbench.downstream.adapter_modules import run_block, windowed_attention
from mpvgbench.downstream.optim import detection_param_groups, segmentation_layer_id, segmentation_param_groups
from mpvgbench.models import build_model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def plain_deit_with(adapter, method: str):
    """A DeiT without layer scale holding the adapter ViT's weights (its gammas left out)."""
    plain = build_model("deit_tiny", method, num_classes=0).eval()
    state = {k: v for k, v in adapter.vit.state_dict().items() if k not in adapter.added_vit_keys}
    plain.load_state_dict(state)
    return plain


@pytest.mark.parametrize("method", ["mpvg", "lape_gap", "gap"])
def test_tokens_equal_plain_deit_with_gamma_zero_and_global_attention(method: str) -> None:
    adapter = build_vit_adapter(method, "segmentation", last_ln="apply").eval()
    for interaction in adapter.interactions:
        assert interaction.injector.gamma.abs().max() == 0  # official Ti: init_values 0
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _, tokens = adapter.forward_with_tokens(img)
        # a plain DeiT (no layer scale: gammas 1 are the identity) run standalone: blocks,
        # Last LN and (MPVG) the Last-LN PE term
        standalone = plain_deit_with(adapter, method).forward_features(img)
    torch.testing.assert_close(tokens, standalone)


def test_tokens_without_last_ln_are_the_last_blocks_output() -> None:
    adapter = build_vit_adapter("mpvg", "segmentation").eval()  # default last_ln="skip"
    seen = {}
    adapter.vit.blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        adapter.vit.forward_features(img)
        standalone = seen.pop("x")
        _, tokens = adapter.forward_with_tokens(img)
    torch.testing.assert_close(tokens, standalone)


def test_injector_changes_tokens_once_gamma_is_nonzero() -> None:
    adapter = build_vit_adapter("mpvg", "segmentation").eval()
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = adapter.forward_with_tokens(img)[1]
        adapter.interactions[0].injector.gamma.fill_(1.0)
        after = adapter.forward_with_tokens(img)[1]
    assert (before - after).abs().max() > 1e-3


def test_pe_chain_runs_on_the_interpolated_grid_at_a_non_square_input() -> None:
    adapter = build_vit_adapter("mpvg", "segmentation", last_ln="apply").eval()
    img = torch.randn(1, 3, 256, 320)
    plain = build_model("deit_tiny", "mpvg", num_classes=0, img_size=(256, 320)).eval()
    state = adapter.vit.state_dict()
    with torch.no_grad():
        state["pos_embed"] = adapter.position_embedding((16, 20))[0]
        plain.load_state_dict({k: v for k, v in state.items() if k not in adapter.added_vit_keys})
        feats, tokens = adapter.forward_with_tokens(img)
        torch.testing.assert_close(tokens, plain.forward_features(img))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 64, 80), (1, 192, 32, 40), (1, 192, 16, 20), (1, 192, 8, 10)]


def test_detection_layout_windows_and_shapes() -> None:
    adapter = build_vit_adapter("pvg", "detection")
    assert adapter.config.window_sizes == DETECTION_WINDOWS == (14, 14, None) * 4
    feats = adapter(torch.randn(2, 3, 256, 320))  # 16x20 tokens: windows need padding
    assert [tuple(f.shape) for f in feats] == [(2, 192, 64, 80), (2, 192, 32, 40), (2, 192, 16, 20), (2, 192, 8, 10)]
    sum(f.sum() for f in feats).backward()
    assert adapter.interactions[0].injector.attn.value_proj.weight.grad is not None


def test_windowed_attention_is_local_and_global_when_one_window_covers_the_map() -> None:
    block = build_model("deit_tiny", "gap", num_classes=0).blocks[0].eval()
    x = torch.randn(1, 16 * 20, 192)
    with torch.no_grad():
        square = x[:, : 16 * 16]  # one unpadded 16x16 window is global attention
        torch.testing.assert_close(windowed_attention(block.attn, square, (16, 16), 16), block.attn(square))
        # padded keys (logit 0, value 0) take part in the softmax, as in ViT-Adapter
        assert not torch.allclose(windowed_attention(block.attn, x, (16, 20), 20), block.attn(x), atol=1e-4)
        base = windowed_attention(block.attn, x, (16, 20), 14)
        moved = x.clone()
        moved[:, 0] += 1.0  # token (0, 0): window (0, 0)
        after = windowed_attention(block.attn, moved, (16, 20), 14)
    changed = (after - base).abs().amax(-1).view(16, 20) > 0
    assert changed[:14, :14].all() and not changed[14:].any() and not changed[:, 14:].any()


def test_classification_checkpoint_loads_by_name_except_head_and_gammas(tmp_path) -> None:
    classifier = build_model("deit_tiny", "mpvg", num_classes=10)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": classifier.state_dict()}, path)
    adapter = build_vit_adapter("mpvg", "detection")
    adapter.load_classification_weights(torch.load(path, weights_only=True))
    torch.testing.assert_close(adapter.vit.pe_chain.last_norm_pe.weight, classifier.pe_chain.last_norm_pe.weight)
    torch.testing.assert_close(adapter.vit.blocks[5].attn.qkv.weight, classifier.blocks[5].attn.qkv.weight)
    assert all((adapter.vit.get_parameter(k) == 1).all() for k in adapter.added_vit_keys)  # not in the checkpoint
    other = build_vit_adapter("pvg", "detection")  # no LN'' : an MPVG checkpoint must not load silently
    before = other.vit.blocks[5].attn.qkv.weight.clone()
    with pytest.raises(ValueError, match="unexpected keys .*last_norm_pe"):
        other.load_classification_weights(classifier.state_dict())
    torch.testing.assert_close(other.vit.blocks[5].attn.qkv.weight, before)  # nothing loaded
    state = classifier.state_dict()
    del state["blocks.3.norm1.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['blocks.3.norm1.weight'\]"):
        adapter.load_classification_weights(state)


def test_checkpoint_with_gammas_loads_them() -> None:
    source = build_vit_adapter("gap", "segmentation")
    with torch.no_grad():
        source.vit.blocks[2].ls2.gamma.fill_(0.5)
    target = build_vit_adapter("gap", "segmentation")
    target.load_classification_weights(source.vit.state_dict())
    assert (target.vit.blocks[2].ls2.gamma == 0.5).all()


def test_layer_scale_gammas_are_ones_at_init_and_official_by_default() -> None:
    adapter = build_vit_adapter("mpvg", "detection")
    assert adapter.config.layer_scale
    assert adapter.added_vit_keys == {f"blocks.{i}.ls{j}.gamma" for i in range(12) for j in (1, 2)}
    for block in adapter.vit.blocks:
        for ls in (block.ls1, block.ls2):
            assert isinstance(ls, LayerScale) and ls.gamma.shape == (192,) and (ls.gamma == 1).all()
            assert ls.gamma.requires_grad
    off = build_vit_adapter("mpvg", "detection", layer_scale=False)
    assert off.added_vit_keys == frozenset() and isinstance(off.vit.blocks[0].ls1, torch.nn.Identity)
    assert sum(p.numel() for p in adapter.parameters()) - sum(p.numel() for p in off.parameters()) == 12 * 2 * 192


@pytest.mark.parametrize("window", [None, 14])
def test_gammas_scale_both_branches_in_global_and_windowed_blocks(window) -> None:
    block = build_vit_adapter("gap", "detection").vit.blocks[0].eval()
    x = torch.randn(1, 16 * 20, 192)
    with torch.no_grad():
        full = run_block(block, x, None, (16, 20), window)
        block.ls1.gamma.zero_()
        mlp_only = run_block(block, x, None, (16, 20), window)
        block.ls2.gamma.zero_()
        torch.testing.assert_close(run_block(block, x, None, (16, 20), window), x)  # both branches off
    assert (full - mlp_only).abs().max() > 1e-3 and (mlp_only - x).abs().max() > 1e-3


def test_gammas_are_grouped_like_the_official_gamma1_gamma2() -> None:
    model = torch.nn.ModuleDict({"backbone": build_vit_adapter("mpvg", "segmentation")})
    decay, no_decay = detection_param_groups(model)
    # MMDet custom_keys (level_embed, pos_embed, norm, bias) do not match gamma1 / ls1.gamma
    assert "backbone.vit.blocks.0.ls1.gamma" in decay["names"] and "backbone.vit.blocks.11.ls2.gamma" in decay["names"]
    by_name = {n: g for g in segmentation_param_groups(model, lr=1.0) for n in g["names"]}
    group = by_name["backbone.vit.blocks.4.ls2.gamma"]  # 1-d: no decay; block 4's layer id 5
    assert group["weight_decay"] == 0.0 and group["lr"] == pytest.approx(0.95 ** (13 - 5))
    assert segmentation_layer_id("backbone.vit.blocks.4.ls2.gamma") == 5


def test_bad_inputs_are_refused() -> None:
    adapter = build_vit_adapter("gap", "segmentation")
    with pytest.raises(ValueError, match="multiple of 32"):
        adapter(torch.randn(1, 3, 224, 240))
    with pytest.raises(ValueError, match="last_ln"):
        build_vit_adapter("gap", "segmentation", last_ln="maybe")
    assert interaction_indexes_for(12) == ((0, 2), (3, 5), (6, 8), (9, 11))
