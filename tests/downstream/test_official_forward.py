"""The adapter's forward against an independent transcription of czczup/ViT-Adapter's two
``ViTAdapter.forward`` functions (``detection/mmdet_custom/models/backbones/vit_adapter.py`` and
``segmentation/mmseg_custom/models/backbones/vit_adapter.py``, with ``adapter_modules.py`` and
``base/vit.py``), run on the same weights.

The transcription below follows the official control flow step by step, with its own arithmetic
where the project has its own code: ``deform_inputs`` / ``get_reference_points`` (linspace
centres), ``Attention`` (explicit softmax), ``WindowedAttention`` (``F.unfold`` / ``F.fold`` over
zero-padded q/k/v), ``Block`` (``gamma1`` / ``gamma2``), ``DWConv``'s ``N // 21`` level split,
``_get_pos_embed``, the split / ``up`` / ``add_vit_feature`` tail. Only the deformable-attention
module itself is the project's (``test_msda.py`` checks it against Deformable DETR's reference)
and the SPM's conv stack (plain ``nn.Sequential`` of the official layers).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mpvgbench.downstream.adapter import ViTAdapter, build_vit_adapter


def official_reference_points(shapes: list[tuple[int, int]]) -> Tensor:
    points = []
    for h, w in shapes:
        ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1)[None] / w, ref_y.reshape(-1)[None] / h), -1))
    return torch.cat(points, 1)[:, :, None]


def official_attention(attn, x: Tensor) -> Tensor:
    b, n, c = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    weights = ((q @ k.transpose(-2, -1)) * (c // attn.num_heads) ** -0.5).softmax(-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


def official_windowed_attention(attn, x: Tensor, h: int, w: int, window: int) -> Tensor:
    b, n, c = x.shape
    heads, n_win = attn.num_heads, window * window
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    qkv = attn.qkv(x).transpose(1, 2).reshape(b, 3 * c, h, w)
    qkv = F.pad(qkv, [0, wp - w, 0, hp - h])
    qkv = F.unfold(qkv, kernel_size=(window, window), stride=(window, window))
    _, ckk, n_windows = qkv.shape
    qkv = qkv.reshape(b, 3 * c, n_win, n_windows).permute(0, 3, 2, 1)
    qkv = qkv.reshape(b, n_windows, n_win, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
    q, k, v = qkv.unbind(0)
    weights = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1)
    out = (weights @ v).permute(0, 2, 4, 3, 1).reshape(b, ckk // 3, n_windows)
    out = F.fold(out, output_size=(hp, wp), kernel_size=(window, window), stride=(window, window))
    return attn.proj(out[:, :, :h, :w].reshape(b, c, n).transpose(-1, -2))


def official_block(block, x: Tensor, h: int, w: int, window: int | None) -> Tensor:
    y = block.norm1(x)
    y = official_attention(block.attn, y) if window is None else official_windowed_attention(block.attn, y, h, w, window)
    x = x + block.ls1.gamma * y
    return x + block.ls2.gamma * block.mlp(block.norm2(x))


def official_conv_ffn(ffn, x: Tensor, h: int, w: int) -> Tensor:
    x = ffn.fc1(x)
    b, n, c = x.shape
    k = n // 21  # the official split: 16k tokens at stride 8, 4k at 16, k at 32
    parts = [(x[:, : 16 * k], 2 * h, 2 * w), (x[:, 16 * k : 20 * k], h, w), (x[:, 20 * k :], h // 2, w // 2)]
    x = torch.cat([ffn.dwconv(p.transpose(1, 2).reshape(b, c, ph, pw)).flatten(2).transpose(1, 2) for p, ph, pw in parts], 1)
    return ffn.fc2(ffn.act(x))


def official_extractor(ex, query: Tensor, refs: Tensor, feat: Tensor, feat_shape, h: int, w: int) -> Tensor:
    query = query + ex.attn(ex.query_norm(query), refs, ex.feat_norm(feat), [feat_shape])
    return query + official_conv_ffn(ex.ffn, ex.ffn_norm(query), h, w)


def official_forward(adapter: ViTAdapter, img: Tensor, per_interaction_tokens: bool) -> list[Tensor]:
    """Official ``ViTAdapter.forward``: segmentation's if ``per_interaction_tokens`` else detection's."""
    vit, spm = adapter.vit, adapter.spm
    _, _, ih, iw = img.shape
    c_shapes = [(ih // 8, iw // 8), (ih // 16, iw // 16), (ih // 32, iw // 32)]
    refs1, refs2 = official_reference_points([(ih // 16, iw // 16)]), official_reference_points(c_shapes)

    c1 = spm.stem(img)
    c2 = spm.conv2(c1)
    c3 = spm.conv3(c2)
    c4 = spm.conv4(c3)
    c1, c2, c3, c4 = spm.fc1(c1), spm.fc2(c2), spm.fc3(c3), spm.fc4(c4)
    bs, dim = c1.shape[:2]
    c2, c3, c4 = (t.view(bs, dim, -1).transpose(1, 2) for t in (c2, c3, c4))
    c2, c3, c4 = c2 + adapter.level_embed[0], c3 + adapter.level_embed[1], c4 + adapter.level_embed[2]
    c = torch.cat([c2, c3, c4], dim=1)

    x = vit.patch_embed.proj(img)
    h, w = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    grid = vit.patch_embed.grid_size
    pos = vit.pos_embed[:, 1:].reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False).reshape(1, -1, h * w).permute(0, 2, 1)
    x = x + pos

    outs = []
    for interaction, (first, last) in zip(adapter.interactions, adapter.config.interaction_indexes):
        inj = interaction.injector
        x = x + inj.gamma * inj.attn(inj.query_norm(x), refs1, inj.feat_norm(c), c_shapes)
        for i in range(first, last + 1):
            x = official_block(vit.blocks[i], x, h, w, adapter.config.window_sizes[i])
        c = official_extractor(interaction.extractor, c, refs2, x, (h, w), h, w)
        for extra in interaction.extra_extractors or ():
            c = official_extractor(extra, c, refs2, x, (h, w), h, w)
        outs.append(x.transpose(1, 2).view(bs, dim, h, w))

    n2, n3 = c2.size(1), c3.size(1)
    c2 = c[:, :n2].transpose(1, 2).view(bs, dim, h * 2, w * 2)
    c3 = c[:, n2 : n2 + n3].transpose(1, 2).view(bs, dim, h, w)
    c4 = c[:, n2 + n3 :].transpose(1, 2).view(bs, dim, h // 2, w // 2)
    c1 = adapter.up(c2) + c1
    x1, x2, x3, x4 = outs if per_interaction_tokens else [x.transpose(1, 2).view(bs, dim, h, w)] * 4
    x1 = F.interpolate(x1, scale_factor=4, mode="bilinear", align_corners=False)
    x2 = F.interpolate(x2, scale_factor=2, mode="bilinear", align_corners=False)
    x4 = F.interpolate(x4, scale_factor=0.5, mode="bilinear", align_corners=False)
    c1, c2, c3, c4 = c1 + x1, c2 + x2, c3 + x3, c4 + x4
    return [adapter.norm1(c1), adapter.norm2(c2), adapter.norm3(c3), adapter.norm4(c4)]


def randomised(adapter: ViTAdapter) -> ViTAdapter:
    """Non-trivial weights everywhere init leaves a neutral value (gammas, BN statistics)."""
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith("gamma"):  # injector gamma (init 0) and layer scale (init 1)
                p.copy_(torch.rand_like(p) + 0.5)
        for m in adapter.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return adapter.eval()


@pytest.fixture(scope="module")
def shared_weights() -> dict[str, Tensor]:
    torch.manual_seed(0)
    return randomised(build_vit_adapter("default", "detection")).state_dict()


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_forward_equals_the_official_forward_per_level(task: str, shared_weights: dict[str, Tensor]) -> None:
    adapter = build_vit_adapter("default", task)
    adapter.load_state_dict(shared_weights)  # one set of weights for both tasks
    adapter.eval()
    img = torch.randn(1, 3, 256, 320, generator=torch.Generator().manual_seed(1))  # 16x20 tokens
    with torch.no_grad():
        ours = adapter(img)
        official = official_forward(adapter, img, per_interaction_tokens=task == "segmentation")
        other = official_forward(adapter, img, per_interaction_tokens=task != "segmentation")
    for level, (a, b, wrong) in enumerate(zip(ours, official, other)):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-4, (task, level, float((a - b).abs().max()))
        if level < 3:  # the other task's rule is far away: the test tells the two apart
            assert (a - wrong).abs().max() > 0.1, (task, level)
    if task == "detection":  # the 16x20 grid needs padded 14x14 windows in blocks 0, 1, 3, 4, ...
        assert adapter.config.window_sizes[0] == 14 and 20 % 14


def test_token_sources_follow_the_task() -> None:
    assert build_vit_adapter("gap", "detection").token_pyramid.source == "last"
    assert build_vit_adapter("gap", "segmentation").token_pyramid.source == "per_interaction"
    assert build_vit_adapter("gap", "segmentation", vit_tokens="last").token_pyramid.source == "last"
    with pytest.raises(ValueError, match="vit_tokens"):
        build_vit_adapter("gap", "segmentation", vit_tokens="first")
