"""ddetr.ops.ms_deform_attn: the compiled CPU kernel (every instruction-set path), its
autograd and fake registrations, the grid_sample fallback, and the argument checks."""
import os
import warnings

import pytest
import torch

from ddetr.ops import (
    BACKEND_ENV,
    HAS_COMPILED_OP,
    check_level_shapes,
    extension,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    msda_backend,
    msda_fallback,
)

# Tests of the kernel itself (its ISA paths, its raw C++ op and work split, its comparison
# with the fallback) need the extension; every behavioural test runs on both backends.
compiled_only = pytest.mark.skipif(not HAS_COMPILED_OP, reason='ddetr._C is not built')


@pytest.fixture(params=[
    pytest.param('compiled', marks=compiled_only),
    'pytorch',
])
def backend(request, monkeypatch):
    """Runs a test once per backend of ``ms_deform_attn``. With ``$DDETR_MSDA_BACKEND`` set
    to one backend (CI's fallback run), only that one runs."""
    forced = os.environ.get(BACKEND_ENV, 'auto')
    if forced not in ('', 'auto') and forced != request.param:
        pytest.skip(f'{BACKEND_ENV}={forced}')
    with msda_backend(request.param):
        yield request.param


def reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Eq. 3's sampling written directly: gather the four neighbours of every point, weight
    them bilinearly (zeros off the map) and by attention. Independent of grid_sample and of
    the kernels; differentiable in value, locations and weights."""
    bs, num_keys, num_heads, head_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    out = value.new_zeros(bs, num_queries, num_heads, head_dims)
    for level, ((height, width), start) in enumerate(zip(spatial_shapes.tolist(),
                                                         level_start_index.tolist())):
        if height * width == 0:
            continue
        value_l = value[:, start:start + height * width]  # (bs, H*W, M, D)
        loc = sampling_locations[:, :, :, level]  # (bs, nq, M, K, 2)
        x = loc[..., 0] * width - 0.5
        y = loc[..., 1] * height - 0.5
        x0, y0 = torch.floor(x.detach()), torch.floor(y.detach())
        for dx in (0, 1):
            for dy in (0, 1):
                xi, yi = x0 + dx, y0 + dy
                wx = 1 - (x - xi).abs()
                wy = 1 - (y - yi).abs()
                inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
                idx = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).long()
                # gather value_l[b, idx[b, q, m, k], m, :] -> (bs, nq, M, K, D)
                heads = torch.arange(num_heads).view(1, 1, num_heads, 1).expand_as(idx)
                batch = torch.arange(bs).view(bs, 1, 1, 1).expand_as(idx)
                sampled = value_l[batch, idx, heads]
                weight = wx * wy * inside * attention_weights[:, :, :, level]
                out = out + (weight.unsqueeze(-1) * sampled).sum(3)
    return out.flatten(2)


def make_inputs(bs=2, shapes=((6, 5), (3, 3), (2, 1)), num_queries=7, num_heads=2, head_dims=4,
                num_points=3, dtype=torch.float64, spread=0.1, seed=0):
    """Random inputs; sampling locations cover the maps plus a `spread` margin outside."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_keys = int(sizes.sum())
    num_levels = len(shapes)
    value = torch.randn(bs, num_keys, num_heads, head_dims, generator=gen, dtype=dtype)
    loc = torch.rand(bs, num_queries, num_heads, num_levels, num_points, 2, generator=gen,
                     dtype=dtype) * (1 + 2 * spread) - spread
    attn = torch.rand(bs, num_queries, num_heads, num_levels, num_points, generator=gen,
                      dtype=dtype)
    attn = attn / attn.sum((-2, -1), keepdim=True)
    return value, spatial_shapes, level_start_index, loc, attn


def supported_isas():
    from ddetr import _C
    original = _C.cpu_isa()
    found = []
    for isa in ('avx512', 'avx2', 'generic'):
        try:
            _C.set_cpu_isa(isa)
        except ValueError:
            continue
        found.append(isa)
    _C.set_cpu_isa(original)
    return found


@pytest.fixture(params=supported_isas() if HAS_COMPILED_OP else ['none'])
def isa(request, backend):
    """Runs a test once per instruction-set path of the CPU kernel this machine can run (once
    in all on the fallback, which has no such paths)."""
    if backend == 'pytorch':
        if request.param != (supported_isas()[0] if HAS_COMPILED_OP else 'none'):
            pytest.skip('the fallback has no instruction-set paths')
        yield request.param
        return
    from ddetr import _C
    original = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(original)


def grads(fn, inputs, grad_out):
    value, shapes, starts, loc, attn = [t.detach().clone() for t in inputs]
    for t in (value, loc, attn):
        t.requires_grad_(True)
    out = fn(value, shapes, starts, loc, attn)
    out.backward(grad_out)
    return out.detach(), value.grad, loc.grad, attn.grad


# head_dims 32 takes the fixed-size kernel, the others the generic channel loop.
@pytest.mark.parametrize('head_dims', [1, 3, 32, 71])
def test_forward_and_gradients_match_reference_float64(isa, head_dims):
    inputs = make_inputs(head_dims=head_dims)
    grad_out = torch.randn(2, 7, 2 * head_dims, dtype=torch.float64)
    ours = grads(ms_deform_attn, inputs, grad_out)
    ref = grads(reference, inputs, grad_out)
    for name, a, b in zip(['output', 'grad_value', 'grad_locations', 'grad_weights'], ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_encoder_like_shapes_match_reference(isa):
    # 4 levels, 8 heads x 32 channels, 4 points: the paper's configuration on tiny maps,
    # every pixel a query.
    inputs = make_inputs(bs=2, shapes=((8, 12), (4, 6), (2, 3), (1, 2)), num_queries=8 * 12,
                         num_heads=8, head_dims=32, num_points=4, spread=0.2)
    grad_out = torch.randn(2, 96, 256, dtype=torch.float64)
    for name, a, b in zip(['output', 'grad_value', 'grad_locations', 'grad_weights'],
                          grads(ms_deform_attn, inputs, grad_out),
                          grads(reference, inputs, grad_out)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize('head_dims', [1, 3, 32, 71, 1025])
def test_gradcheck(isa, head_dims):
    value, shapes, starts, loc, attn = make_inputs(bs=1, shapes=((3, 2), (2, 2)), num_queries=2,
                                                   num_heads=2, head_dims=head_dims, num_points=2,
                                                   spread=0.3)
    for t in (value, loc, attn):
        t.requires_grad_(True)
    # Wide heads check random projections of the Jacobian (fast_mode), narrow ones all of it.
    assert torch.autograd.gradcheck(
        lambda v, l, a: ms_deform_attn(v, shapes, starts, l, a), (value, loc, attn),
        eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=head_dims > 64)


def test_points_far_outside_the_map_read_zeros(isa):
    value, shapes, starts, loc, attn = make_inputs()
    far = torch.tensor([-1e9, -3.0, -0.6, 1.6, 4.0, 1e9], dtype=torch.float64)
    loc = far[torch.randint(0, 6, loc.shape, generator=torch.Generator().manual_seed(1))]
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    assert torch.equal(out, torch.zeros_like(out))
    # Mixed: half the points far outside, half inside, compares with the reference.
    inside = make_inputs()[3]
    mixed = torch.where(torch.rand(loc.shape[:-1] + (1,)) < 0.5, loc, inside)
    torch.testing.assert_close(ms_deform_attn(value, shapes, starts, mixed, attn),
                               reference(value, shapes, starts, mixed, attn))


def test_non_finite_locations_read_zeros_and_never_crash(isa):
    value, shapes, starts, loc, attn = make_inputs()
    bad = loc.clone()
    bad[:, :, :, :, 0] = float('nan')
    bad[:, :, :, :, 1, 0] = float('inf')
    bad[:, :, :, :, 2, 1] = -float('inf')
    out = ms_deform_attn(value, shapes, starts, bad, attn)
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.zeros_like(out))
    for t in (value, bad, attn):
        t.requires_grad_(True)
    ms_deform_attn(value, shapes, starts, bad, attn).sum().backward()
    assert torch.equal(bad.grad, torch.zeros_like(bad))
    assert torch.equal(attn.grad, torch.zeros_like(attn))
    assert torch.equal(value.grad, torch.zeros_like(value))


@compiled_only
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_vector_kernels_read_zeros_off_the_map_even_next_to_infinite_values(isa, dtype):
    """The vector kernels (head_dims 32) give a corner off the map weight 0 and a row of
    zeros, never a neighbouring row (0 * inf would be NaN). 4 levels x 5 points = 20 points
    a head: a full and a partial group of 16."""
    value, shapes, starts, loc, attn = make_inputs(bs=2, shapes=((6, 5), (3, 3), (2, 1), (4, 4)),
                                                   num_queries=5, num_heads=2, head_dims=32,
                                                   num_points=5, dtype=dtype)
    gen = torch.Generator().manual_seed(2)
    # Points with no corner on their map, value infinite everywhere: exactly 0, gradients 0.
    off = torch.tensor([-1e9, -0.6, 1.6, 1e9, float('nan'), float('inf'), -float('inf')])
    far = off[torch.randint(0, len(off), loc.shape, generator=gen)].to(dtype)
    far[..., 0] = torch.where(torch.rand(far.shape[:-1], generator=gen) < 0.3, 0.5, far[..., 0])
    leaves = [t.clone().requires_grad_(True)
              for t in (torch.full_like(value, float('inf')), far, attn)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert torch.equal(out, torch.zeros_like(out))
    out.backward(torch.ones_like(out))
    for t in leaves:
        assert torch.equal(t.grad, torch.zeros_like(t)), t.shape
    # Points in the top-left cell of their map, only pixel (0, 0) on it, every other row
    # infinite: the same results as with those rows at 0.
    pixel = -0.9 + torch.rand(loc.shape, generator=gen) * 0.8  # (x, y) - 0.5 in (-0.9, -0.1)
    corner = ((pixel + 0.5) / shapes.flip(-1).view(1, 1, 1, -1, 1, 2)).to(dtype)
    finite = value.abs() + 1
    rows0 = torch.zeros(value.shape[1], dtype=torch.bool)
    rows0[starts] = True
    with_inf = torch.where(rows0[None, :, None, None], finite, float('inf')).to(dtype)
    with_zero = torch.where(rows0[None, :, None, None], finite, 0.0).to(dtype)
    results = []
    for v in (with_inf, with_zero):
        leaves = [t.clone().requires_grad_(True) for t in (v, corner, attn)]
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
        out.backward(torch.ones_like(out))
        results.append([out, leaves[1].grad, leaves[2].grad])
    assert torch.isfinite(results[0][0]).all() and results[0][0].abs().sum() > 0
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_zero_queries_and_empty_batch(isa):
    for bs, num_queries in [(2, 0), (0, 5)]:
        value, shapes, starts, loc, attn = make_inputs(bs=bs, num_queries=num_queries)
        for t in (value, loc, attn):
            t.requires_grad_(True)
        out = ms_deform_attn(value, shapes, starts, loc, attn)
        assert out.shape == (bs, num_queries, 8)
        out.sum().backward()
        assert value.grad.shape == value.shape and torch.equal(value.grad, torch.zeros_like(value))
        assert loc.grad.shape == loc.shape and attn.grad.shape == attn.shape


def test_empty_level_is_skipped(isa):
    value, shapes, starts, loc, attn = make_inputs(shapes=((4, 3), (0, 5), (2, 2)))
    torch.testing.assert_close(ms_deform_attn(value, shapes, starts, loc, attn),
                               reference(value, shapes, starts, loc, attn))


@pytest.mark.parametrize('bs,im2col_step', [(3, 2), (5, 64), (1, 1)])
def test_any_batch_size_with_any_im2col_step(bs, im2col_step, backend):
    inputs = make_inputs(bs=bs)
    out = ms_deform_attn(*inputs, im2col_step=im2col_step)
    per_sample = torch.cat([ms_deform_attn(inputs[0][i:i + 1], inputs[1], inputs[2],
                                           inputs[3][i:i + 1], inputs[4][i:i + 1])
                            for i in range(bs)])
    torch.testing.assert_close(out, per_sample, rtol=0, atol=0)


def test_non_contiguous_inputs(backend):
    value, shapes, starts, loc, attn = make_inputs(head_dims=6)
    # Same values, permuted memory layouts.
    value_nc = value.transpose(0, 1).contiguous().transpose(0, 1)
    loc_nc = loc.transpose(-1, -2).contiguous().transpose(-1, -2)
    attn_nc = attn.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous() or attn_nc.is_contiguous())
    grad_out = torch.randn(7, 2, 12, dtype=torch.float64).transpose(0, 1)
    ours = grads(ms_deform_attn, (value_nc, shapes, starts, loc_nc, attn_nc), grad_out)
    ref = grads(ms_deform_attn, (value, shapes, starts, loc, attn), grad_out.contiguous())
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# 252 keys: 50 queries x 12 samples read each value row about twice (the backward reads
# value in place); 400 queries about 19 times (it copies each head's rows first).
@pytest.mark.parametrize('num_queries', [50, 400])
@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_half_precision_against_float32(isa, dtype, tol, num_queries):
    value, shapes, starts, loc, attn = make_inputs(bs=2, shapes=((16, 12), (8, 6), (4, 3)),
                                                   num_queries=num_queries, num_heads=4,
                                                   head_dims=32, num_points=4, dtype=torch.float32)
    low = [t.to(dtype) for t in (value, loc, attn)]
    out_low = ms_deform_attn(low[0], shapes, starts, low[1], low[2])
    # The float32 result on the half-rounded inputs isolates the kernel's own error.
    out_ref = ms_deform_attn(low[0].float(), shapes, starts, low[1].float(), low[2].float())
    assert out_low.dtype == dtype
    torch.testing.assert_close(out_low.float(), out_ref, rtol=tol, atol=tol)
    # Both ways compute in float32 in the same order: the forward is exactly the rounded
    # float32 result.
    assert torch.equal(out_low, out_ref.to(dtype))
    # Backward runs in float32 accumulation: value and attention gradients stay close.
    grad_out = torch.randn_like(out_ref)
    g_low = grads(ms_deform_attn, (low[0], shapes, starts, low[1], low[2]), grad_out.to(dtype))
    g_ref = grads(ms_deform_attn, (low[0].float(), shapes, starts, low[1].float(), low[2].float()),
                  grad_out.to(dtype).float())
    for i in (1, 3):  # grad_value, grad_weights
        assert g_low[i].dtype == dtype
        torch.testing.assert_close(g_low[i].float(), g_ref[i], rtol=tol, atol=4 * tol)


# The vector kernels (float32/bfloat16/float16 with head_dims 32) in each work split and
# read mode of the backward: (bs, num_heads, num_queries, shapes). 3 levels x 6 points = 18
# points per head, more than one chunk of 16; spread puts corners off the maps.
VECTOR_CASES = {
    'by head, dense reads': (2, 8, 120, ((6, 5), (3, 3), (2, 1))),
    'by head, sparse reads': (2, 8, 3, ((16, 12), (8, 6), (4, 3))),
    'by query': (1, 2, 60, ((6, 5), (3, 3), (2, 1))),
}


@compiled_only
@pytest.mark.parametrize('case', sorted(VECTOR_CASES))
@pytest.mark.parametrize('threads', [1, 2])
def test_float32_vector_kernel_matches_float64_reference(isa, case, threads):
    bs, num_heads, num_queries, shapes = VECTOR_CASES[case]
    inputs = make_inputs(bs=bs, shapes=shapes, num_queries=num_queries, num_heads=num_heads,
                         head_dims=32, num_points=6, spread=0.2, dtype=torch.float32)
    grad_out = torch.randn(bs, num_queries, num_heads * 32)
    wide = [t.double() if t.is_floating_point() else t for t in inputs]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = grads(ms_deform_attn, inputs, grad_out)
    finally:
        torch.set_num_threads(before)
    ref = grads(reference, wide, grad_out.double())
    for name, a, b in zip(['output', 'grad_value', 'grad_locations', 'grad_weights'], ours, ref):
        assert a.dtype == torch.float32
        # Location gradients scale with the map size (d/dx of x * width).
        tol = 1e-4 * (16 if name == 'grad_locations' else 1)
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol, msg=name)


@compiled_only
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_output_is_float32_output_rounded_with_specials(isa, dtype):
    """The vector kernels round their float32 accumulators to the output type like torch's
    conversion, also for infinity, values out of the type's range and subnormals; NaN stays
    NaN."""
    value, shapes, starts, loc, attn = make_inputs(bs=2, num_heads=2, head_dims=32,
                                                   num_queries=9, dtype=torch.float32)
    value[0, :, 0, :4] = torch.tensor([float('nan'), float('inf'), -float('inf'), 1e6])
    value[1, :, 1, 5:] *= 1e-3  # subnormal outputs in float16
    low = [t.to(dtype) for t in (value, loc, attn)]
    out_low = ms_deform_attn(low[0], shapes, starts, low[1], low[2])
    out_ref = ms_deform_attn(low[0].float(), shapes, starts, low[1].float(), low[2].float())
    nan = torch.isnan(out_ref)
    assert nan.any() and torch.isinf(out_ref).any()
    assert torch.equal(torch.isnan(out_low), nan)  # NaN bit patterns differ between conversions
    assert torch.equal(out_low[~nan].view(torch.int16), out_ref.to(dtype)[~nan].view(torch.int16))


def test_float32_matches_float64(backend):
    inputs = make_inputs(head_dims=32)
    out32 = ms_deform_attn(*[t.float() if t.is_floating_point() else t for t in inputs])
    torch.testing.assert_close(out32.double(), ms_deform_attn(*inputs), rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic(backend):
    inputs = make_inputs(bs=2, shapes=((20, 20), (10, 10)), num_queries=300, num_heads=8,
                         head_dims=32, num_points=4, dtype=torch.float32, spread=0.0)
    grad_out = torch.randn(2, 300, 256)
    first = grads(ms_deform_attn, inputs, grad_out)
    second = grads(ms_deform_attn, inputs, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@compiled_only  # compares the kernel with the fallback
def test_fallback_equals_kernel():
    for dtype in (torch.float64, torch.float32):
        inputs = make_inputs(head_dims=5, dtype=dtype, spread=0.3)
        grad_out = torch.randn(2, 7, 10, dtype=dtype)
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        ours = grads(ms_deform_attn, inputs, grad_out)
        fallback = grads(lambda *a: ms_deform_attn_pytorch(*a), inputs, grad_out)
        for name, a, b in zip(['output', 'grad_value', 'grad_locations', 'grad_weights'], ours,
                              fallback):
            if name == 'grad_locations' and dtype == torch.float32:
                continue  # float32 location gradients flip near pixel centres (see kernel notes)
            torch.testing.assert_close(a, b, msg=f'{name} {dtype}', **tol)


@compiled_only  # tests backend 'auto' choosing the fallback when the kernel is missing
def test_fallback_is_used_with_one_warning_when_no_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(extension, 'has_kernel', lambda device: False)
    monkeypatch.setattr(extension, '_warned', False)
    real_fallback = msda_fallback.ms_deform_attn_pytorch
    monkeypatch.setattr(msda_fallback, 'ms_deform_attn_pytorch',
                        lambda *a: calls.append(1) or real_fallback(*a))
    inputs = make_inputs()
    with warnings.catch_warnings(record=True) as caught, msda_backend('auto'):
        warnings.simplefilter('always')
        out1 = ms_deform_attn(*inputs)
        out2 = ms_deform_attn(*inputs)
    assert len(calls) == 2
    assert len([w for w in caught if 'pure-PyTorch' in str(w.message)]) == 1
    torch.testing.assert_close(out1, reference(*inputs))
    assert torch.equal(out1, out2)


@compiled_only  # tests the compiled op's switch to the fallback under ONNX export
def test_onnx_export_traces_the_fallback(monkeypatch):
    calls = []
    real_fallback = msda_fallback.ms_deform_attn_pytorch
    monkeypatch.setattr(msda_fallback, 'ms_deform_attn_pytorch',
                        lambda *a: calls.append(1) or real_fallback(*a))
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    with msda_backend('auto'):
        ms_deform_attn(*make_inputs())
    assert calls == [1]


# opcheck tests the registration of the torch.ops custom op, which only the extension defines
@compiled_only
def test_opcheck():
    for head_dims in (4, 32):
        inputs = make_inputs(head_dims=head_dims, dtype=torch.float32)
        args = list(inputs[:3]) + [t.requires_grad_(True) for t in inputs[3:]] + [64]
        args[0] = args[0].requires_grad_(True)
        torch.library.opcheck(torch.ops.ddetr.ms_deform_attn.default, tuple(args))


def test_torch_compile_fullgraph_forward_and_backward(backend):
    torch._dynamo.reset()
    value, shapes, starts, loc, attn = make_inputs(head_dims=32, dtype=torch.float32)

    def fn(v, l, a):
        return (ms_deform_attn(v, shapes, starts, l, a) * 2).sum()

    compiled = torch.compile(fn, fullgraph=True)
    eager_inputs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    compiled_inputs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    fn(*eager_inputs).backward()
    compiled(*compiled_inputs).backward()
    for a, b in zip(eager_inputs, compiled_inputs):
        torch.testing.assert_close(a.grad, b.grad)


def test_kernel_choice_for_cuda_traces_without_a_graph_break():
    # On a GPU the op asks whether ddetr._C has a CUDA kernel while torch.compile traces it;
    # a call into the extension there broke fullgraph=True (seen on an H200). The same
    # question, traced here for a CUDA device on any machine:
    torch._dynamo.reset()

    def fn(x):
        return x + 1 if extension.has_kernel(torch.device('cuda')) else x - 1

    expected = fn(torch.ones(2))
    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend='eager')(
        torch.ones(2)), expected)


# ---------------------------------------------------------------------------------------
# Bad input: every case raises ValueError/TypeError naming the argument, through the Python
# API and through the raw op (the C++ checks), and never crashes the process.

def _bad_cases():
    v, s, i, l, a = make_inputs()
    return {
        'value rank': ((v[0], s, i, l, a), ValueError, 'value'),
        'locations rank': ((v, s, i, l[..., 0, :], a), ValueError, 'sampling_locations'),
        'weights rank': ((v, s, i, l, a[..., None]), ValueError, 'attention_weights'),
        'shapes rank': ((v, s.flatten(), i, l, a), ValueError, 'spatial_shapes'),
        'start rank': ((v, s, i[None], l, a), ValueError, 'level_start_index'),
        'batch mismatch': ((v, s, i, l[:1], a[:1]), ValueError, 'sampling_locations'),
        'heads mismatch': ((v[:, :, :1], s, i, l, a), ValueError, 'sampling_locations'),
        'levels mismatch': ((v, s[:2], i[:2], l, a), ValueError, 'sampling_locations'),
        'xy size': ((v, s, i, l[..., :1], a), ValueError, 'sampling_locations'),
        'weights shape': ((v, s, i, l, a[:, :, :, :, :2]), ValueError, 'attention_weights'),
        'start size': ((v, s, i[:2], l, a), ValueError, 'level_start_index'),
        'num_keys': ((v[:, :-1], s, i, l, a), ValueError, 'keys'),
        'start values': ((v, s, i.flip(0), l, a), ValueError, 'level_start_index'),
        'negative shape': ((v, s * torch.tensor([[1, -1], [1, 1], [1, 1]]), i, l, a), ValueError,
                           'spatial_shapes'),
        'huge shape': ((v, torch.tensor([[2**40, 2**40], [3, 3], [2, 1]]), i, l, a), ValueError,
                       'keys'),
        'int32 shapes': ((v, s.int(), i, l, a), TypeError, 'int64'),
        'int32 start': ((v, s, i.int(), l, a), TypeError, 'int64'),
        'float shapes': ((v, s.double(), i, l, a), TypeError, 'int64'),
        'mixed dtypes': ((v, s, i, l.float(), a), TypeError, 'dtype'),
        'integer value': ((v.long(), s, i, l.long(), a.long()), TypeError, 'floating'),
        'meta device': ((v, s, i, l.to('meta'), a), ValueError, 'device'),
    }


@pytest.mark.parametrize('case', sorted(_bad_cases()))
def test_bad_input_raises_named_error(case, backend):
    args, error, needle = _bad_cases()[case]
    with pytest.raises(error, match=needle):
        ms_deform_attn(*args)
    if HAS_COMPILED_OP:  # the C++ checks of the raw op, whichever backend the API uses
        with pytest.raises(error, match=needle):
            torch.ops.ddetr.ms_deform_attn(*args, 64)


def test_bad_im2col_step_and_non_tensor(backend):
    inputs = make_inputs()
    with pytest.raises(ValueError, match='im2col_step'):
        ms_deform_attn(*inputs, im2col_step=0)
    with pytest.raises(TypeError, match='spatial_shapes'):
        ms_deform_attn(inputs[0], [[6, 5], [3, 3], [2, 1]], *inputs[2:])


@compiled_only  # the raw backward op is the extension's
def test_bad_grad_output_to_raw_backward():
    v, s, i, l, a = make_inputs()
    with pytest.raises(ValueError, match='grad_output'):
        torch.ops.ddetr.ms_deform_attn_backward(v, s, i, l, a, torch.zeros(2, 7, 9,
                                                                           dtype=torch.float64), 64)
    with pytest.raises(TypeError, match='grad_output'):
        torch.ops.ddetr.ms_deform_attn_backward(v, s, i, l, a, torch.zeros(2, 7, 8), 64)


@compiled_only  # the kept blocks are the CPU kernel's
@pytest.mark.parametrize('num_queries', [64, 16384])
def test_large_value_gradient_reuses_a_kept_block(num_queries):
    """Value gradients of 32 MiB or more come from blocks the backward keeps instead of
    fresh memory; a kept block's old contents never reach the next gradient. 64 queries:
    few rows sampled, the gradient zeroed and accumulated in place (the decoder); 16,384:
    every element written once (the encoder)."""
    from ddetr.ops import release_grad_cache
    release_grad_cache()
    # (2, 16384, 8, 32) float32: exactly 32 MiB
    inputs = make_inputs(bs=2, shapes=((128, 128),), num_queries=num_queries, num_heads=8,
                         head_dims=32, num_points=4, dtype=torch.float32, spread=0.0)
    grad_out = torch.randn(2, num_queries, 256)
    fresh = torch.ops.ddetr.ms_deform_attn_backward(*inputs, grad_out, 64)
    expected = [g.clone() for g in fresh]
    block = fresh[0].data_ptr()
    fresh[0].fill_(float('nan'))  # what a reused block must not pass on
    del fresh
    reused = torch.ops.ddetr.ms_deform_attn_backward(*inputs, grad_out, 64)
    assert reused[0].data_ptr() == block
    for got, want in zip(reused, expected):
        assert torch.equal(got, want)
    # and the first one was right: against the fallback in float64
    ref = grads(ms_deform_attn_pytorch,
                [t.double() if t.is_floating_point() else t for t in inputs], grad_out.double())
    torch.testing.assert_close(reused[0].double(), ref[1], rtol=1e-4, atol=1e-4)
    del reused
    assert release_grad_cache() >= 32 * 2**20
    assert release_grad_cache() == 0


@compiled_only  # the thread work split is the CPU kernel's
@pytest.mark.parametrize('bs,num_heads', [(1, 2), (2, 8)])
def test_thread_count_and_work_split_do_not_change_results(bs, num_heads):
    """With few (batch, head) pairs per thread the kernel splits queries across threads
    (private grad_value buffers); with many it gives whole heads to threads. Both splits,
    at 1 and 2 threads, agree with the reference."""
    inputs = make_inputs(bs=bs, num_heads=num_heads, head_dims=32, num_queries=40)
    grad_out = torch.randn(bs, 40, num_heads * 32, dtype=torch.float64)
    ref = grads(reference, inputs, grad_out)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for a, b in zip(grads(ms_deform_attn, inputs, grad_out), ref):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    finally:
        torch.set_num_threads(threads)


def test_autocast_runs_in_float32(backend):
    """Under CPU autocast the projections give bfloat16 while reference points stay float32;
    the op takes both and computes in float32."""
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = ms_deform_attn(value.bfloat16(), shapes, starts, loc, attn.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ms_deform_attn(value.bfloat16().float(), shapes, starts, loc,
                                                   attn.bfloat16().float()))
    with pytest.raises(TypeError, match='dtype'):  # outside autocast mixed dtypes are an error
        ms_deform_attn(value.bfloat16(), shapes, starts, loc, attn)


# ---------------------------------------------------------------------------------------
# Backend selection and the value checks outside the op.

def test_backend_selection_by_env_var_and_context_manager(monkeypatch):
    calls = []
    real_fallback = msda_fallback._grid_sample_impl
    monkeypatch.setattr(msda_fallback, '_grid_sample_impl',
                        lambda *a: calls.append(1) or real_fallback(*a))
    inputs = make_inputs()
    monkeypatch.setenv(BACKEND_ENV, 'pytorch')
    assert 'active backend: pytorch' in extension.backend_info()
    ms_deform_attn(*inputs)
    assert calls == [1]
    if HAS_COMPILED_OP:
        with msda_backend('compiled'):  # the context manager wins over the env var
            assert 'active backend: compiled' in extension.backend_info()
            ms_deform_attn(*inputs)
        assert calls == [1]
    monkeypatch.setenv(BACKEND_ENV, 'cuda-fast')
    with pytest.raises(ValueError, match='auto, compiled, pytorch'):
        ms_deform_attn(*inputs)
    with pytest.raises(ValueError, match='auto, compiled, pytorch'):
        with msda_backend('grid'):
            pass


def test_compiled_backend_without_extension_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(extension, 'HAS_COMPILED_OP', False)
    with pytest.raises(RuntimeError, match='ddetr._C could not be imported.*build_ext'):
        with msda_backend('compiled'):
            pass
    monkeypatch.setenv(BACKEND_ENV, 'compiled')
    with pytest.raises(RuntimeError, match='backend "compiled"'):
        ms_deform_attn(*make_inputs())


def test_check_level_shapes():
    check_level_shapes([(6, 5), (3, 3), (2, 1)], num_keys=41)
    with pytest.raises(ValueError, match='41 keys but spatial_shapes'):
        check_level_shapes([(6, 5), (3, 3), (2, 2)], num_keys=41)
    with pytest.raises(ValueError, match=r'spatial_shapes\[1\] = \(-3, 3\)'):
        check_level_shapes([(6, 5), (-3, 3)], num_keys=21)
    with pytest.raises(ValueError, match=r'level_start_index\[1\] is 29'):
        check_level_shapes([(6, 5), (3, 3)], num_keys=39, level_start_index=[0, 29])


@compiled_only  # the no-host-read promise is the compiled path's (the fallback loops on ints)
def test_compiled_path_reads_no_values_in_python(monkeypatch):
    inputs = make_inputs()
    with msda_backend('compiled'):
        expected = ms_deform_attn(*inputs)

    def forbidden(*args, **kwargs):
        raise AssertionError('host read of a tensor in the op call')

    with msda_backend('compiled'):
        monkeypatch.setattr(torch.Tensor, 'tolist', forbidden)
        monkeypatch.setattr(torch.Tensor, 'item', forbidden)
        out = ms_deform_attn(*inputs)
        monkeypatch.undo()
    assert torch.equal(out, expected)


@compiled_only  # the work split and the half-type accumulators are the CPU kernel's
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('bs,num_heads', [(1, 2), (2, 8)])
@pytest.mark.parametrize('num_queries', [3, 40])  # 41 keys: sparse / dense reads
def test_half_backward_is_float32_backward_rounded(dtype, bs, num_heads, num_queries):
    """Half types accumulate in float32 (per-head scratch, written whole or only its sampled
    rows, or float32 buffers, by work split), so their gradients are the float32 kernel's on
    the same values, rounded once."""
    torch.manual_seed(0)
    value, shapes, starts, loc, attn = make_inputs(bs=bs, num_heads=num_heads, head_dims=32,
                                                   num_queries=num_queries, dtype=torch.float32)
    value, loc, attn = (t.to(dtype) for t in (value, loc, attn))
    grad_out = torch.randn(bs, num_queries, num_heads * 32).to(dtype)
    half = torch.ops.ddetr.ms_deform_attn_backward(value, shapes, starts, loc, attn, grad_out, 64)
    wide = torch.ops.ddetr.ms_deform_attn_backward(value.float(), shapes, starts, loc.float(),
                                                   attn.float(), grad_out.float(), 64)
    for name, h, w in zip(('value', 'locations', 'weights'), half, wide):
        assert h.dtype == dtype
        assert torch.equal(h, w.to(dtype)), name
