"""ViT-Adapter around our DeiT: PE delivery, window attention, checkpoint loading, shapes."""

from __future__ import annotations

import pytest
import torch

from mpvgbench.downstream.adapter import DETECTION_WINDOWS, build_vit_adapter, interaction_indexes_for
from mpvgbench.downstream.adapter_modules import windowed_attention
from mpvgbench.models import build_model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("method", ["mpvg", "lape_gap", "gap"])
def test_tokens_equal_plain_deit_with_gamma_zero_and_global_attention(method: str) -> None:
    adapter = build_vit_adapter(method, "segmentation", last_ln="apply").eval()
    for interaction in adapter.interactions:
        assert interaction.injector.gamma.abs().max() == 0  # official Ti: init_values 0
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _, tokens = adapter.forward_with_tokens(img)
        # the same backbone run standalone: blocks, Last LN and (MPVG) the Last-LN PE term
        standalone = adapter.vit.forward_features(img)
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
        plain.load_state_dict(state)
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


def test_classification_checkpoint_loads_by_name_except_head(tmp_path) -> None:
    classifier = build_model("deit_tiny", "mpvg", num_classes=10)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": classifier.state_dict()}, path)
    adapter = build_vit_adapter("mpvg", "detection")
    adapter.load_classification_weights(torch.load(path, weights_only=True))
    torch.testing.assert_close(adapter.vit.pe_chain.last_norm_pe.weight, classifier.pe_chain.last_norm_pe.weight)
    torch.testing.assert_close(adapter.vit.blocks[5].attn.qkv.weight, classifier.blocks[5].attn.qkv.weight)
    other = build_vit_adapter("pvg", "detection")  # no LN'' : an MPVG checkpoint must not load silently
    with pytest.raises(RuntimeError, match="last_norm_pe"):
        other.load_classification_weights(classifier.state_dict())


def test_bad_inputs_are_refused() -> None:
    adapter = build_vit_adapter("gap", "segmentation")
    with pytest.raises(ValueError, match="multiple of 32"):
        adapter(torch.randn(1, 3, 224, 240))
    with pytest.raises(ValueError, match="last_ln"):
        build_vit_adapter("gap", "segmentation", last_ln="maybe")
    assert interaction_indexes_for(12) == ((0, 2), (3, 5), (6, 8), (9, 11))
