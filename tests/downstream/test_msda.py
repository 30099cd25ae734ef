"""Multi-scale deformable attention: equal to a per-point loop, differentiable, fp32 under autocast."""

from __future__ import annotations

import math

import pytest
import torch

from mpvgbench.downstream.msda import (
    MultiScaleDeformableAttention,
    level_start_index,
    msda_core,
    reference_points,
)

SHAPES = [(5, 7), (3, 4), (2, 2)]


def naive_msda(value, shapes, locations, weights):
    """The CUDA kernel's rule point by point: pixel coordinate = loc * size - 0.5, bilinear over
    the four neighbours, a neighbour outside the map contributes zero."""
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    starts = level_start_index(shapes)
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(n_points):
                        x = locations[b, q, head, lvl, p, 0].item() * w - 0.5
                        y = locations[b, q, head, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        acc = torch.zeros(d, dtype=value.dtype)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    acc += wy * wx * value[b, starts[lvl] + yy * w + xx, head]
                        out[b, q, head] += weights[b, q, head, lvl, p] * acc
    return out.reshape(n, lq, m * d)


def random_inputs(dtype=torch.float64, n=2, lq=6, m=2, d=3, points=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    # spread over [-0.3, 1.3]: a good share of the samples falls (partly) outside the maps
    locations = torch.rand(n, lq, m, len(SHAPES), points, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    weights = torch.rand(n, lq, m, len(SHAPES) * points, generator=g, dtype=dtype).softmax(-1)
    return value, locations, weights.view(n, lq, m, len(SHAPES), points)


def test_core_equals_per_point_loop_including_out_of_map_points() -> None:
    value, locations, weights = random_inputs()
    outside = ((locations < 0) | (locations > 1)).any(-1)
    assert outside.any() and (~outside).any()  # both regimes are exercised
    got = msda_core(value, SHAPES, locations, weights)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, naive_msda(value, SHAPES, locations, weights), rtol=1e-10, atol=1e-12)


def test_core_far_outside_is_zero() -> None:
    value, locations, weights = random_inputs()
    far = torch.full_like(locations, 3.0)
    assert msda_core(value, SHAPES, far, weights).abs().max() == 0


def test_core_gradcheck() -> None:
    value, locations, weights = random_inputs(n=1, lq=3, m=2, d=2, points=2)
    value.requires_grad_()
    locations.requires_grad_()
    weights.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, loc, w: msda_core(v, SHAPES, loc, w), (value, locations, weights), eps=1e-6, atol=1e-5
    )


def test_module_gradcheck_through_projections() -> None:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=4, n_levels=len(SHAPES), n_heads=2, n_points=2).double()
    nn_init = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial offsets and weights (the init has zero weights)
        for p in attn.parameters():
            p.add_(torch.randn(p.shape, generator=nn_init, dtype=p.dtype) * 0.1)
    s = sum(h * w for h, w in SHAPES)
    query = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(1, s, 4, dtype=torch.float64, requires_grad=True)
    refs = torch.rand(1, 4, 1, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, x: attn(q, refs, x, SHAPES), (query, inputs), eps=1e-6, atol=1e-5)


def test_module_matches_loop_semantics() -> None:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=8, n_levels=len(SHAPES), n_heads=2, n_points=3, ratio=0.5).double()
    s = sum(h * w for h, w in SHAPES)
    query, inputs = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, s, 8, dtype=torch.float64)
    refs = torch.rand(2, 5, len(SHAPES), 2, dtype=torch.float64)
    value = attn.value_proj(inputs).view(2, s, 2, -1)
    offsets = attn.sampling_offsets(query).view(2, 5, 2, len(SHAPES), 3, 2)
    weights = attn.attention_weights(query).view(2, 5, 2, -1).softmax(-1).view(2, 5, 2, len(SHAPES), 3)
    norm = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64)
    locations = refs[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
    expected = attn.output_proj(naive_msda(value, SHAPES, locations, weights))
    torch.testing.assert_close(attn(query, refs, inputs, SHAPES), expected)


def test_init_points_on_a_ring_with_uniform_weights() -> None:
    attn = MultiScaleDeformableAttention(dim=8, n_levels=2, n_heads=4, n_points=2)
    bias = attn.sampling_offsets.bias.view(4, 2, 2, 2)
    torch.testing.assert_close(bias[0, 0, 0], torch.tensor([1.0, 0.0]))  # head 0 points right
    torch.testing.assert_close(bias[1, 1, 1], torch.tensor([0.0, 2.0]))  # head 1 down, point 2 at 2 px
    assert attn.attention_weights.weight.abs().max() == 0


def test_core_runs_in_fp32_under_autocast() -> None:
    value, locations, weights = random_inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = msda_core(value.bfloat16(), SHAPES, locations, weights)
    assert out.dtype == torch.float32
    reference = msda_core(value.bfloat16().float(), SHAPES, locations, weights)
    torch.testing.assert_close(out, reference)


def test_reference_points_are_pixel_centres() -> None:
    refs = reference_points([(2, 4), (1, 1)])
    assert refs.shape == (1, 9, 1, 2)
    torch.testing.assert_close(refs[0, 0, 0], torch.tensor([0.125, 0.25]))
    torch.testing.assert_close(refs[0, 7, 0], torch.tensor([0.875, 0.75]))
    torch.testing.assert_close(refs[0, 8, 0], torch.tensor([0.5, 0.5]))
    assert level_start_index([(2, 4), (1, 1), (3, 3)]) == [0, 8, 9]


def test_wrong_shapes_are_refused() -> None:
    value, locations, weights = random_inputs()
    with pytest.raises(ValueError, match="do not add up"):
        msda_core(value, [(5, 7), (3, 4), (2, 3)], locations, weights)
