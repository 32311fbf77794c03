"""The op from ``F.grid_sample``, in pure PyTorch: what runs without the compiled
extension, on devices it has no kernel for, and in ONNX exports. Portable but slow and
memory-hungry (it materializes every sampled value before the weighted sum); the same
results as the kernels (tests/ops compare them in float64)."""
import torch
import torch.nn.functional as F
from torch import Tensor

from .msda_checks import (
    check_level_shapes,
    check_metadata,
    level_shapes,
    level_starts,
    values_on_host,
)

__all__ = ['ms_deform_attn_pytorch']


def ms_deform_attn_pytorch(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                           sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """The same op from ``F.grid_sample``: one call per level on (bs * num_heads) maps.

    Portable (any device, ONNX export, ``torch.compile``) but slow and memory-hungry: it
    materializes every sampled value before the weighted sum. Rejects the compiled op's bad
    inputs with its messages (values where they are on the host) and, like the kernel,
    computes half-precision inputs in float32.
    """
    if torch.compiler.is_compiling():
        # The level loop needs the shapes as Python ints: an opaque op with a fake kernel
        # (which runs check_metadata on the traced shapes) keeps the graph whole
        # (fullgraph=True) instead of breaking on ``tolist``.
        return torch.ops.ddetr_fallback.ms_deform_attn(value, spatial_shapes, level_start_index,
                                                       sampling_locations, attention_weights)
    check_metadata(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights)
    return _grid_sample_impl(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights)


def _grid_sample_impl(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                      sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    dtype = value.dtype
    if dtype in (torch.float16, torch.bfloat16):  # accumulate in float32, as the kernel does
        out = _grid_sample_impl(value.float(), spatial_shapes, level_start_index,
                                sampling_locations.float(), attention_weights.float())
        return out.to(dtype)
    value, sampling_locations, attention_weights = (
        value.contiguous(), sampling_locations.contiguous(), attention_weights.contiguous())
    bs, num_keys, num_heads, head_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = level_shapes(spatial_shapes)  # symbolic while tracing (ONNX --dynamic)
    starts = level_starts(level_start_index)
    if values_on_host(spatial_shapes, level_start_index):
        check_level_shapes(shapes, num_keys, starts)
    if num_queries == 0 or bs == 0:
        # Zeros that are still a function of the inputs (zero gradients of their shapes).
        anchor = sum(t.reshape(-1)[:0].sum() for t in (value, sampling_locations,
                                                        attention_weights))
        return value.new_zeros(bs, num_queries, num_heads * head_dims) + anchor
    # A non-finite location reads zeros, as in the kernel: move it off every map (-1 is a
    # full map width outside), which also gives it zero gradients.
    sampling_locations = torch.where(torch.isfinite(sampling_locations), sampling_locations,
                                     sampling_locations.new_full((), -1.0))
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)
    # (bs, nq, M, L, K) -> (bs * M, 1, nq, L * K)
    weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries,
                                                        num_levels * num_points)
    output = value.new_zeros(bs * num_heads, head_dims, num_queries)
    for level, ((height, width), start) in enumerate(zip(shapes, starts)):
        if isinstance(height, int) and height * width == 0:
            continue
        # (bs, H*W, M, D) -> (bs * M, D, H, W)
        value_l = value[:, start:start + height * width].permute(0, 2, 3, 1).reshape(
            bs * num_heads, head_dims, height, width)
        # (bs * M, D, nq, K)
        sampled = F.grid_sample(value_l, grids[:, :, level], mode='bilinear',
                                padding_mode='zeros', align_corners=False)
        weights_l = weights[..., level * num_points:(level + 1) * num_points]
        output += (sampled * weights_l).sum(-1)
    if output.requires_grad:  # one gradient layout, so sums run in one order (bit-exact)
        output.register_hook(lambda grad: None if grad is None else grad.contiguous())
    # (bs * M, D, nq) -> (bs, nq, M * D)
    return output.view(bs, num_heads * head_dims, num_queries).transpose(1, 2).contiguous()


@torch.library.custom_op('ddetr_fallback::ms_deform_attn', mutates_args=())
def _fallback_op(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                 sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """The fallback as one opaque op, for ``torch.compile`` only (eager calls the function)."""
    return _grid_sample_impl(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights)


@torch.library.custom_op('ddetr_fallback::ms_deform_attn_backward', mutates_args=())
def _fallback_backward_op(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                          sampling_locations: Tensor, attention_weights: Tensor,
                          grad_output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # (Autograd is off inside a custom op's kernel; torch.func differentiates anyway.)
    _, vjp = torch.func.vjp(
        lambda v, loc, attn: _grid_sample_impl(v, spatial_shapes, level_start_index, loc, attn),
        value, sampling_locations, attention_weights)
    return tuple(g.contiguous() for g in vjp(grad_output.contiguous()))


@_fallback_op.register_fake
def _fallback_fake(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights):
    check_metadata(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights)
    bs, _, num_heads, head_dims = value.shape
    return value.new_empty(bs, sampling_locations.shape[1], num_heads * head_dims)


@_fallback_backward_op.register_fake
def _fallback_backward_fake(value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights, grad_output):
    return (torch.empty_like(value), torch.empty_like(sampling_locations),
            torch.empty_like(attention_weights))


def _fallback_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _fallback_backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
        ctx.saved_tensors
    grad_value, grad_locations, grad_weights = _fallback_backward_op(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        grad_output)
    return grad_value, None, None, grad_locations, grad_weights


_fallback_op.register_autograd(_fallback_backward, setup_context=_fallback_setup_context)
