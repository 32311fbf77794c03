"""MultiScaleDeformableAttention: Eq. 3 against a direct float64 computation, the A.4
initialization, 2-d / 4-d reference points, padding, and multi-scale attention off."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import ddetr.models.layers.multi_scale_deformable_attention as msda_module
from ddetr.models.layers import MultiScaleDeformableAttention

SHAPES = [(5, 7), (3, 4), (2, 1)]  # odd sizes, a 1-wide level


def level_index(shapes):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def randomize(module, gen, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def eq3_reference(module, query, reference_points, value, shapes, mask):
    """Eq. 3 term by term: for every head m, level l and point k, bilinearly sample the
    projected map W'_m x^l at phi_l(p) + dp (zeros outside), weight by A_mlqk, sum, and
    apply W_m."""
    bs, nq, _ = query.shape
    M, L, K = module.num_heads, module.num_levels, module.num_points
    head_dims = module.embed_dims // M
    projected = module.value_proj(value).masked_fill(mask[..., None], 0)
    offsets = module.sampling_offsets(query).view(bs, nq, M, L, K, 2)
    weights = module.attention_weights(query).view(bs, nq, M, L * K).softmax(-1)
    weights = weights.view(bs, nq, M, L, K)
    out = torch.zeros(bs, nq, M, head_dims, dtype=query.dtype)
    start = 0
    for level, (h, w) in enumerate(shapes):
        maps = projected[:, start:start + h * w].view(bs, h, w, M, head_dims)
        start += h * w
        for b, q, m, k in itertools.product(range(bs), range(nq), range(M), range(K)):
            if reference_points.shape[-1] == 2:
                loc = reference_points[b, q, level] + offsets[b, q, m, level, k] / torch.tensor(
                    [w, h], dtype=query.dtype)
            else:
                box = reference_points[b, q, level]
                loc = box[:2] + offsets[b, q, m, level, k] / K * box[2:] * 0.5
            # pixel coordinates of the location, pixel centres at integers
            x, y = loc[0] * w - 0.5, loc[1] * h - 0.5
            x0, y0 = math.floor(x.item()), math.floor(y.item())
            sampled = torch.zeros(head_dims, dtype=query.dtype)
            for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                if 0 <= xi < w and 0 <= yi < h:
                    sampled = sampled + (1 - abs(x - xi)) * (1 - abs(y - yi)) * maps[b, yi, xi, m]
            out[b, q, m] += weights[b, q, m, level, k] * sampled
    return module.output_proj(out.flatten(2))


@pytest.mark.parametrize('ref_dims', [2, 4])
@pytest.mark.parametrize('embed_dims,num_heads', [(8, 2), (15, 3)])  # odd head dims too
def test_matches_eq3_in_float64(ref_dims, embed_dims, num_heads):
    gen = torch.Generator().manual_seed(0)
    module = MultiScaleDeformableAttention(embed_dims=embed_dims, num_heads=num_heads,
                                           num_levels=3, num_points=2).double()
    randomize(module, gen)
    spatial_shapes, starts = level_index(SHAPES)
    num_keys = int(spatial_shapes.prod(1).sum())
    query = torch.randn(2, 4, embed_dims, generator=gen, dtype=torch.float64)
    value = torch.randn(2, num_keys, embed_dims, generator=gen, dtype=torch.float64)
    refs = torch.rand(2, 4, 3, ref_dims, generator=gen, dtype=torch.float64)
    mask = torch.zeros(2, num_keys, dtype=torch.bool)
    mask[1, :7] = True  # some padded keys in the second image
    out = module(query, refs, value, spatial_shapes, starts, key_padding_mask=mask)
    expected = eq3_reference(module, query, refs, value, SHAPES, mask)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


class Capture:
    """Stands in for the op and records its sampling locations and weights."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = msda_module.ms_deform_attn

        def op(value, spatial_shapes, level_start_index, locations, weights, im2col_step=64):
            self.calls.append((locations, weights))
            return real(value, spatial_shapes, level_start_index, locations, weights,
                        im2col_step)
        monkeypatch.setattr(msda_module, 'ms_deform_attn', op)


def test_a4_initialization(monkeypatch):
    M, L, K = 8, 4, 3
    module = MultiScaleDeformableAttention(embed_dims=32, num_heads=M, num_levels=L,
                                           num_points=K)
    assert torch.all(module.sampling_offsets.weight == 0)
    assert torch.all(module.attention_weights.weight == 0)
    assert torch.all(module.attention_weights.bias == 0)
    bias = module.sampling_offsets.bias.view(M, L, K, 2)
    # head m points in one of the paper's 8 directions, the k-th point at distance k
    directions = bias[:, 0, 0]
    paper = {(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)}
    assert {tuple(round(v) for v in d.tolist()) for d in directions} == paper
    torch.testing.assert_close(directions, directions.round(), atol=1e-6, rtol=0)
    for k in range(K):
        torch.testing.assert_close(bias[:, :, k], directions[:, None].expand(M, L, 2) * (k + 1),
                                   atol=1e-6, rtol=0)
    for proj in (module.value_proj, module.output_proj):
        assert torch.all(proj.bias == 0)
        bound = math.sqrt(6 / (proj.in_features + proj.out_features))  # xavier-uniform
        assert proj.weight.abs().max() <= bound and proj.weight.std() > bound / 3

    # in use: attention 1/(LK) everywhere, points at the reference + k pixels per direction
    capture = Capture(monkeypatch)
    spatial_shapes, starts = level_index([(8, 6), (4, 3), (2, 2), (1, 1)])
    num_keys = int(spatial_shapes.prod(1).sum())
    refs = torch.rand(1, 5, L, 2)
    module(torch.randn(1, 5, 32), refs, torch.randn(1, num_keys, 32), spatial_shapes, starts)
    locations, weights = capture.calls[0]
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / (L * K)))
    wh = spatial_shapes.flip(-1).float()  # (L, 2) as (W, H)
    pixels = (locations - refs[:, :, None, :, None, :]) * wh[None, None, None, :, None, :]
    torch.testing.assert_close(pixels[0, 0], bias, atol=1e-5, rtol=0)


def test_box_references_a4_scaling(monkeypatch):
    """4-d references: offsets / K * (w, h) / 2; at init all points lie inside the box."""
    K = 4
    module = MultiScaleDeformableAttention(embed_dims=16, num_heads=8, num_levels=2,
                                           num_points=K)
    capture = Capture(monkeypatch)
    spatial_shapes, starts = level_index([(6, 5), (3, 3)])
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.3], [0.3, 0.6, 0.1, 0.05]])[None]  # (1, 2, 4)
    refs = boxes[:, :, None].expand(1, 2, 2, 4)
    module(torch.randn(1, 2, 16), refs, torch.randn(1, 39, 16), spatial_shapes, starts)
    locations = capture.calls[0][0]  # (1, 2, M, L, K, 2)
    bias = module.sampling_offsets.bias.view(8, 2, K, 2)
    expected = boxes[:, :, None, None, None, :2] + bias / K * boxes[:, :, None, None, None, 2:] / 2
    torch.testing.assert_close(locations, expected)
    low = boxes[:, :, None, None, None, :2] - boxes[:, :, None, None, None, 2:] / 2
    high = boxes[:, :, None, None, None, :2] + boxes[:, :, None, None, None, 2:] / 2
    assert torch.all(locations >= low - 1e-6) and torch.all(locations <= high + 1e-6)


def test_padded_keys_contribute_nothing():
    gen = torch.Generator().manual_seed(1)
    module = MultiScaleDeformableAttention(embed_dims=8, num_heads=2, num_levels=3,
                                           num_points=2)
    randomize(module, gen, scale=1.0)
    spatial_shapes, starts = level_index(SHAPES)
    num_keys = int(spatial_shapes.prod(1).sum())
    query = torch.randn(1, 6, 8, generator=gen)
    refs = torch.rand(1, 6, 3, 2, generator=gen)
    value = torch.randn(1, num_keys, 8, generator=gen)
    mask = torch.zeros(1, num_keys, dtype=torch.bool)
    mask[0, ::2] = True
    changed = value.clone()
    changed[mask] += 5.0
    out = module(query, refs, value, spatial_shapes, starts, mask)
    torch.testing.assert_close(module(query, refs, changed, spatial_shapes, starts, mask), out)
    assert not torch.allclose(module(query, refs, changed, spatial_shapes, starts), out)


def test_multi_scale_off_encoder_queries_sample_their_own_level(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    module = MultiScaleDeformableAttention(embed_dims=8, num_heads=2, num_levels=3,
                                           num_points=2, multi_scale=False)
    randomize(module, gen, scale=1.0)
    spatial_shapes, starts = level_index(SHAPES)
    sizes = spatial_shapes.prod(1)
    num_keys = int(sizes.sum())
    levels = torch.repeat_interleave(torch.arange(3), sizes)
    value = torch.randn(1, num_keys, 8, generator=gen)
    query = torch.randn(1, num_keys, 8, generator=gen)
    refs = torch.rand(1, num_keys, 3, 2, generator=gen)
    capture = Capture(monkeypatch)
    out = module(query, refs, value, spatial_shapes, starts, query_levels=levels)
    weights = capture.calls[0][1]  # (1, nq, M, L, K)
    per_level = weights.sum(-1)  # (1, nq, M, L)
    torch.testing.assert_close(per_level, F.one_hot(levels, 3).float()[None, :, None].expand_as(
        per_level))
    for level in range(3):
        changed = value.clone()
        changed[0, levels != level] += 3.0  # every other level
        new = module(query, refs, changed, spatial_shapes, starts, query_levels=levels)
        own = levels == level
        torch.testing.assert_close(new[0, own], out[0, own])
        assert not torch.allclose(new[0, ~own], out[0, ~own])


def test_multi_scale_off_decoder_queries_average_levels(monkeypatch):
    module = MultiScaleDeformableAttention(embed_dims=16, num_heads=4, num_levels=3,
                                           num_points=2, multi_scale=False)
    spatial_shapes, starts = level_index(SHAPES)
    num_keys = int(spatial_shapes.prod(1).sum())
    args = (torch.randn(2, 5, 16), torch.rand(2, 5, 3, 2), torch.randn(2, num_keys, 16),
            spatial_shapes, starts)
    with torch.no_grad():
        module.attention_weights.weight.normal_()
    capture = Capture(monkeypatch)
    module(*args)
    per_level = capture.calls[0][1].sum(-1)  # each level's share: fixed 1/L
    torch.testing.assert_close(per_level, torch.full_like(per_level, 1 / 3))
    # at the A.4 init (uniform logits) it coincides with multi-scale attention
    off = MultiScaleDeformableAttention(embed_dims=16, num_heads=4, num_levels=3,
                                        num_points=2, multi_scale=False)
    on = MultiScaleDeformableAttention(embed_dims=16, num_heads=4, num_levels=3, num_points=2)
    on.load_state_dict(off.state_dict())
    torch.testing.assert_close(off(*args), on(*args))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match='divisible'):
        MultiScaleDeformableAttention(embed_dims=10, num_heads=4)
    module = MultiScaleDeformableAttention(embed_dims=8, num_heads=2, num_levels=3)
    spatial_shapes, starts = level_index(SHAPES[:2])
    with pytest.raises(ValueError, match='built for 3 levels'):
        module(torch.randn(1, 2, 8), torch.rand(1, 2, 3, 2), torch.randn(1, 47, 8),
               spatial_shapes, starts)
    spatial_shapes, starts = level_index(SHAPES)
    with pytest.raises(ValueError, match='reference_points'):
        module(torch.randn(1, 2, 8), torch.rand(1, 2, 3, 3), torch.randn(1, 49, 8),
               spatial_shapes, starts)


def spied_module_and_inputs(ref_dims, monkeypatch):
    """A module with trained-like (random) weights, its inputs (2 images, 5 queries, 3
    levels) and the list of (sampling_locations, attention_weights) the op is called with."""
    gen = torch.Generator().manual_seed(0)
    module = MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=3,
                                           num_points=2)
    randomize(module, gen)
    spatial_shapes, level_start_index = level_index(SHAPES)
    num_keys = int(spatial_shapes.prod(1).sum())
    kwargs = dict(query=torch.randn(2, 5, 16, generator=gen),
                  reference_points=torch.rand(2, 5, 3, ref_dims, generator=gen),
                  value=torch.randn(2, num_keys, 16, generator=gen),
                  spatial_shapes=spatial_shapes, level_start_index=level_start_index)
    calls = []
    original_op = msda_module.ms_deform_attn

    def spy(value, spatial_shapes, level_start_index, sampling_locations, weights, *args):
        calls.append((sampling_locations, weights))
        return original_op(value, spatial_shapes, level_start_index, sampling_locations,
                           weights, *args)

    monkeypatch.setattr(msda_module, 'ms_deform_attn', spy)
    return module, kwargs, calls


@pytest.mark.parametrize('ref_dims', [2, 4])
def test_offsets_and_locations_are_float32_under_autocast(ref_dims, monkeypatch):
    """Trained (non-zero) offset weights: under bfloat16 autocast the offset projection
    still runs in float32, so the locations reaching the op are float32 and equal the
    float32 run's; values and attention weights may come from bfloat16 projections."""
    module, kwargs, calls = spied_module_and_inputs(ref_dims, monkeypatch)
    with torch.no_grad():
        module(**kwargs)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            module(**kwargs)
    (ref, _), (amp, _) = calls
    assert amp.dtype == torch.float32
    torch.testing.assert_close(amp, ref, rtol=1e-6, atol=1e-6)


def test_attention_softmax_in_float32_under_autocast(monkeypatch):
    """Under bfloat16 autocast the logits' projection may be bfloat16, but the softmax runs
    in the op's float32 (as CUDA's autocast does): the weights the op gets are the float32
    softmax of the bfloat16 logits, each query's and head's weights summing to 1 to float32
    precision (a bfloat16 softmax is off by ~1e-3)."""
    module, kwargs, calls = spied_module_and_inputs(2, monkeypatch)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        module(**kwargs)
        logits = module.attention_weights(kwargs['query'])
    assert logits.dtype == torch.bfloat16
    expected = logits.float().view(2, 5, 2, 6).softmax(-1).view(2, 5, 2, 3, 2)
    (_, weights), = calls
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, expected, rtol=0, atol=0)
    torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(2, 5, 2), rtol=0, atol=1e-6)
