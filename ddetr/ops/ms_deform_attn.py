"""Multi-scale deformable attention, the sampling core of Eq. 3 of Deformable DETR.

``ms_deform_attn`` calls the torch custom op ``torch.ops.ddetr.ms_deform_attn`` (a C++ CPU
kernel and a CUDA kernel in ``ddetr._C``), registered here with a fake (meta) kernel for
``torch.compile`` and an autograd formula. When the extension is missing, or the tensors
live on a device it has no kernel for, or an ONNX export is tracing, the same result comes
from ``grid_sample`` (:mod:`.msda_fallback`); :mod:`.extension` chooses, and
:mod:`.msda_checks` holds the argument rules outside C++.

Shapes (those of every public implementation)::

    value               (bs, num_keys, num_heads, head_dims)
    spatial_shapes      (num_levels, 2) int64, (H, W) of each level
    level_start_index   (num_levels,) int64, index of each level's first key
    sampling_locations  (bs, num_queries, num_heads, num_levels, num_points, 2),
                        normalized (x, y): (0, 0) top-left, (1, 1) bottom-right corner
    attention_weights   (bs, num_queries, num_heads, num_levels, num_points)
    -> output           (bs, num_queries, num_heads * head_dims)

A location samples the map bilinearly at pixel (x * W - 0.5, y * H - 0.5), reading zeros
outside it (grid_sample's ``align_corners=False``).
"""
import torch
from torch import Tensor

from . import extension, msda_fallback
from .extension import HAS_COMPILED_OP
from .msda_checks import check_metadata, check_python_args

__all__ = ['ms_deform_attn']


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor,
                   im2col_step: int = 64) -> Tensor:
    """Multi-scale deformable attention sampling: for every query and head, the attention-
    weighted sum of ``value`` sampled bilinearly at ``sampling_locations`` (Eq. 3 without
    the projections W_m, W'_m). See the module docstring for shapes.

    ``im2col_step`` is a tuning knob of the CUDA kernel kept for signature compatibility;
    any batch size works with any value. Under autocast the op computes in float32 and
    returns float32. The implementation is the backend :mod:`ddetr.ops.extension` selects
    (``msda_backend``, ``$DDETR_MSDA_BACKEND``).
    """
    check_python_args(dict(value=value, spatial_shapes=spatial_shapes,
                           level_start_index=level_start_index,
                           sampling_locations=sampling_locations,
                           attention_weights=attention_weights), im2col_step)
    if torch.is_autocast_enabled(value.device.type):
        # Under autocast the op runs in float32, like grid_sample: the projections feeding
        # it come out in half precision while the reference points stay in float32.
        value, sampling_locations, attention_weights = (
            t.float() if t.is_floating_point() else t
            for t in (value, sampling_locations, attention_weights))
    backend = extension.selected_backend()
    use_kernel = backend != 'pytorch' and not torch.onnx.is_in_onnx_export()
    if use_kernel and extension.has_kernel(value.device):
        # The C++ op checks everything itself (values only where they are on the host).
        return torch.ops.ddetr.ms_deform_attn(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights, im2col_step)
    if backend == 'compiled' and use_kernel:
        raise RuntimeError(f'ms_deform_attn: backend "compiled" has no kernel for '
                           f'{value.device.type} (ddetr._C: {extension.backend_info()})')
    if backend == 'auto' and not torch.compiler.is_compiling() \
            and not torch.onnx.is_in_onnx_export():
        extension.warn_fallback(value.device)
    return msda_fallback.ms_deform_attn_pytorch(value, spatial_shapes, level_start_index,
                                                sampling_locations, attention_weights)


if HAS_COMPILED_OP:

    @torch.library.register_fake('ddetr::ms_deform_attn')
    def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights, im2col_step=64):
        check_metadata(value, spatial_shapes, level_start_index, sampling_locations,
                       attention_weights)
        bs, _, num_heads, head_dims = value.shape
        return value.new_empty(bs, sampling_locations.shape[1], num_heads * head_dims)

    @torch.library.register_fake('ddetr::ms_deform_attn_backward')
    def _ms_deform_attn_backward_fake(value, spatial_shapes, level_start_index,
                                      sampling_locations, attention_weights, grad_output,
                                      im2col_step=64):
        check_metadata(value, spatial_shapes, level_start_index, sampling_locations,
                       attention_weights)
        return (torch.empty_like(value), torch.empty_like(sampling_locations),
                torch.empty_like(attention_weights))

    def _setup_context(ctx, inputs, output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = inputs[:5]
        ctx.im2col_step = inputs[5] if len(inputs) > 5 else 64
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)

    def _backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
            ctx.saved_tensors
        grad_value, grad_locations, grad_weights = torch.ops.ddetr.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous(), ctx.im2col_step)
        return grad_value, None, None, grad_locations, grad_weights, None

    torch.library.register_autograd('ddetr::ms_deform_attn', _backward,
                                    setup_context=_setup_context)
