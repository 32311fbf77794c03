"""ms_deform_attn's CUDA kernel against the CPU float64 kernel (skipped without a GPU; CUDA
is not touched at import: ``torch.cuda.is_available`` does not initialize it)."""

import pytest
import torch

from ddetr.ops import HAS_COMPILED_OP, ms_deform_attn, msda_backend

pytestmark = pytest.mark.skipif(
    not (HAS_COMPILED_OP and torch.cuda.is_available()),
    reason='needs a CUDA GPU and ddetr._C built with CUDA')


def make_inputs(bs=2, shapes=((6, 5), (3, 3), (2, 1)), num_queries=7, num_heads=2, head_dims=4,
                num_points=3, spread=0.1, seed=0):
    """float64 CPU inputs; locations cover the maps plus a `spread` margin outside."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_levels = len(shapes)
    value = torch.randn(bs, int(sizes.sum()), num_heads, head_dims, generator=gen,
                        dtype=torch.float64)
    loc = torch.rand(bs, num_queries, num_heads, num_levels, num_points, 2, generator=gen,
                     dtype=torch.float64) * (1 + 2 * spread) - spread
    attn = torch.rand(bs, num_queries, num_heads, num_levels, num_points, generator=gen,
                      dtype=torch.float64)
    return value, spatial_shapes, level_start_index, loc, attn / attn.sum((-2, -1), True)


def run(inputs, device, dtype, grad_out, im2col_step=64):
    """Output and the three gradients, returned as float64 on the CPU."""
    value, shapes, starts, loc, attn = inputs
    # detach: .to() of a tensor that already requires grad would give a non-leaf (no .grad)
    leaves = [t.detach().to(device, dtype).requires_grad_(True) for t in (value, loc, attn)]
    with msda_backend('compiled'):
        out = ms_deform_attn(leaves[0], shapes.to(device), starts.to(device), leaves[1],
                             leaves[2], im2col_step=im2col_step)
    out.backward(grad_out.to(device, dtype))
    return [t.detach().double().cpu() for t in [out] + [x.grad for x in leaves]]


TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3,
              torch.bfloat16: 3e-2}


@pytest.mark.parametrize('dtype', list(TOLERANCES))
@pytest.mark.parametrize('head_dims', [1, 3, 32, 71, 1025])
def test_forward_and_gradients_match_cpu_float64(dtype, head_dims):
    inputs = make_inputs(head_dims=head_dims)
    # Round the inputs to dtype first so the comparison isolates the kernel's own error.
    inputs = [t.to(dtype).double() if t.is_floating_point() else t for t in inputs]
    grad_out = torch.randn(2, 7, 2 * head_dims, dtype=torch.float64).to(dtype).double()
    ref = run(inputs, 'cpu', torch.float64, grad_out)
    got = run(inputs, 'cuda', dtype, grad_out)
    tol = TOLERANCES[dtype]
    names = ['output', 'grad_value', 'grad_locations', 'grad_weights']
    for name, a, b in zip(names, got, ref):
        if name == 'grad_locations' and dtype != torch.float64:
            continue  # location gradients flip sign across pixel centres at low precision
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 4, msg=f'{name} {dtype}')


def test_points_far_outside_and_zero_queries():
    value, shapes, starts, loc, attn = make_inputs()
    far = loc * 1e6 + 1e3
    got = run((value, shapes, starts, far, attn), 'cuda', torch.float32,
              torch.ones(2, 7, 8, dtype=torch.float64))
    assert torch.equal(got[0], torch.zeros_like(got[0]))
    empty = make_inputs(num_queries=0)
    got = run(empty, 'cuda', torch.float32, torch.zeros(2, 0, 8, dtype=torch.float64))
    assert got[0].shape == (2, 0, 8) and torch.equal(got[1], torch.zeros_like(got[1]))


@pytest.mark.parametrize('bs,im2col_step', [(3, 2), (5, 64), (7, 3)])
def test_batch_not_divisible_by_im2col_step(bs, im2col_step):
    inputs = make_inputs(bs=bs)
    grad_out = torch.randn(bs, 7, 8, dtype=torch.float64)
    for a, b in zip(run(inputs, 'cuda', torch.float64, grad_out, im2col_step),
                    run(inputs, 'cpu', torch.float64, grad_out)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_value_over_2_pow_31_elements_uses_64_bit_indexing():
    # value: (1, 2^21 + 1 keys, 1 head, 1024 dims) > 2^31 elements, half precision (4 GiB).
    height, width, head_dims = 1, 2**21 + 1, 1024
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip('needs 24 GiB of GPU memory')
    value = torch.zeros(1, height * width, 1, head_dims, dtype=torch.float16, device='cuda')
    value[0, -1] = 1.0  # only the last key, past element 2^31, is non-zero
    assert value.numel() > 2**31
    shapes = torch.tensor([[height, width]], device='cuda')
    starts = torch.zeros(1, dtype=torch.int64, device='cuda')
    # One query at the centre of the last pixel, one at the first.
    loc = torch.tensor([[(width - 0.5) / width, 0.5], [0.5 / width, 0.5]], device='cuda',
                       dtype=torch.float16).view(1, 2, 1, 1, 1, 2)
    attn = torch.ones(1, 2, 1, 1, 1, dtype=torch.float16, device='cuda')
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    # float16 cannot hold (width - 0.5) / width (it rounds to 1.0, half a pixel to the right):
    # the bilinear weight of the last pixel at the rounded location, 0.5 here, is what must
    # come out; reading any key before element 2^31 would give 0.
    x = loc[0, 0, 0, 0, 0, 0].double().item() * width - 0.5
    weight = max(0.0, 1.0 - abs(x - (width - 1)))
    assert weight > 0
    assert torch.equal(out[0, 0].float().cpu(), torch.full((head_dims,), weight))
    assert torch.equal(out[0, 1].float().cpu(), torch.zeros(head_dims))


def test_opcheck():
    value, shapes, starts, loc, attn = [t.cuda() for t in make_inputs(head_dims=32)]
    args = [value.float().requires_grad_(True), shapes, starts,
            loc.float().requires_grad_(True), attn.float().requires_grad_(True), 64]
    torch.library.opcheck(torch.ops.ddetr.ms_deform_attn.default, tuple(args))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    value, shapes, starts, loc, attn = [t.cuda() for t in make_inputs(head_dims=32)]

    def fn(v, l, a):
        return (ms_deform_attn(v, shapes, starts, l, a) * 2).sum()

    eager = [t.float().clone().requires_grad_(True) for t in (value, loc, attn)]
    compiled = [t.float().clone().requires_grad_(True) for t in (value, loc, attn)]
    fn(*eager).backward()
    torch.compile(fn, fullgraph=True)(*compiled).backward()
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a.grad, b.grad)


def test_deterministic_mode_raises_for_backward():
    value, shapes, starts, loc, attn = [t.cuda().float() for t in make_inputs()]
    value.requires_grad_(True)
    out = ms_deform_attn(value, shapes.long(), starts.long(), loc, attn)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match='ms_deform_attn_backward_cuda'):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
