"""Multi-scale deformable attention, the sampling core of Eq. 3 of Deformable DETR.

``ms_deform_attn`` is a torch custom op (``torch.ops.ddetr.ms_deform_attn``) with a C++ CPU
kernel and a CUDA kernel in ``ddetr._C``, a fake (meta) kernel for ``torch.compile`` and an
autograd formula. When the extension is missing, or the tensors live on a device it has no
kernel for, or an ONNX export is tracing, the same result comes from ``grid_sample``
(``ms_deform_attn_pytorch``).

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
import contextlib
import os
import warnings
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from ddetr import _C
except ImportError as e:  # built with DDETR_WITH_OPS=0, or not built yet
    _C = None
    _IMPORT_ERROR: Optional[ImportError] = e
else:
    _IMPORT_ERROR = None

HAS_COMPILED_OP = _C is not None and hasattr(torch.ops.ddetr, 'ms_deform_attn')

__all__ = ['ms_deform_attn', 'ms_deform_attn_pytorch', 'backend_info', 'msda_backend',
           'level_shapes', 'level_starts', 'HAS_COMPILED_OP']

_warned = False

# Backend selection (minimal version, for ONNX export/parity): 'auto' takes the compiled
# kernel where there is one, 'pytorch' always takes ms_deform_attn_pytorch. Set per block
# with ``msda_backend`` or for a process with the environment variable DDETR_MSDA_BACKEND.
BACKENDS = ('auto', 'pytorch')
_forced_backend: Optional[str] = None


def _check_backend(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f'ms_deform_attn: unknown backend {name!r} from {where}; choose one '
                         f'of {BACKENDS}')
    return name


@contextlib.contextmanager
def msda_backend(name: str) -> Iterator[None]:
    """Within the block, ``ms_deform_attn`` uses backend ``name`` ('auto' or 'pytorch',
    the grid_sample path), whatever DDETR_MSDA_BACKEND says."""
    global _forced_backend
    previous = _forced_backend
    _forced_backend = _check_backend(name, 'msda_backend()')
    try:
        yield
    finally:
        _forced_backend = previous


def _current_backend() -> str:
    if _forced_backend is not None:
        return _forced_backend
    return _check_backend(os.environ.get('DDETR_MSDA_BACKEND', 'auto') or 'auto',
                          'the environment variable DDETR_MSDA_BACKEND')


def backend_info() -> str:
    """A line saying which implementation runs on which device."""
    if not HAS_COMPILED_OP:
        return f'pure-PyTorch fallback only (ddetr._C not importable: {_IMPORT_ERROR})'
    devices = f'CPU ({_C.cpu_isa()})' + (' and CUDA' if _C.with_cuda() else '')
    return f'compiled op ddetr._C for {devices}'


def _has_kernel(device: torch.device) -> bool:
    if not HAS_COMPILED_OP:
        return False
    if device.type == 'cpu':
        return True
    return device.type == 'cuda' and _C.with_cuda()


def _warn_fallback(device: torch.device) -> None:
    global _warned
    if not _warned:
        _warned = True
        reason = (f'ddetr._C could not be imported ({_IMPORT_ERROR})'
                  if not HAS_COMPILED_OP else f'ddetr._C has no kernel for {device.type}')
        warnings.warn(f'ms_deform_attn: {reason}; using the slower pure-PyTorch '
                      f'grid_sample implementation', stacklevel=3)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def level_shapes(spatial_shapes: Tensor) -> list:
    """(L, 2) int64 -> [(H_l, W_l)] to loop over levels: Python ints, or 0-d tensors while
    tracing (an ONNX export), so that sizes stay symbolic and ``--dynamic`` exports work."""
    if _tracing():
        return [(spatial_shapes[level, 0], spatial_shapes[level, 1])
                for level in range(len(spatial_shapes))]
    return [tuple(hw) for hw in spatial_shapes.tolist()]


def level_starts(level_start_index: Tensor) -> list:
    """(L,) int64 -> [start_l], Python ints or, while tracing, 0-d tensors (see above)."""
    if _tracing():
        return list(level_start_index.unbind(0))
    return level_start_index.tolist()


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_args(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
               sampling_locations: Tensor, attention_weights: Tensor, im2col_step: int = 64,
               check_values: bool = True) -> None:
    """Raise ValueError / TypeError naming the argument when the inputs do not fit together.

    The same checks run in C++ for the compiled op; they live here too so that the
    fallback and every device give the same errors. ``check_values`` also reads
    ``spatial_shapes`` and ``level_start_index`` (a device sync on GPU).
    """
    args = dict(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                sampling_locations=sampling_locations, attention_weights=attention_weights)
    for name, t in args.items():
        if not isinstance(t, Tensor):
            raise TypeError(f'ms_deform_attn: {name} must be a Tensor, got {type(t).__name__}')
    layouts = dict(value=(4, '(bs, num_keys, num_heads, head_dims)'),
                   spatial_shapes=(2, '(num_levels, 2)'),
                   level_start_index=(1, '(num_levels,)'),
                   sampling_locations=(6, '(bs, num_queries, num_heads, num_levels, num_points, 2)'),
                   attention_weights=(5, '(bs, num_queries, num_heads, num_levels, num_points)'))
    for name, (rank, layout) in layouts.items():
        if args[name].dim() != rank:
            raise ValueError(f'ms_deform_attn: {name} must be {rank}-D {layout}, '
                             f'got shape {_shape(args[name])}')
    if not isinstance(im2col_step, int) or isinstance(im2col_step, bool) or im2col_step <= 0:
        raise ValueError(f'ms_deform_attn: im2col_step must be a positive int, got {im2col_step!r}')

    bs, num_keys, num_heads, _ = value.shape
    num_levels = spatial_shapes.shape[0]
    expected = [
        ('spatial_shapes', 1, 2, '(H, W)'),
        ('level_start_index', 0, num_levels, 'num_levels'),
        ('sampling_locations', 0, bs, 'bs of value'),
        ('sampling_locations', 2, num_heads, 'num_heads of value'),
        ('sampling_locations', 3, num_levels, 'num_levels of spatial_shapes'),
        ('sampling_locations', 5, 2, '(x, y)'),
    ]
    for name, dim, size, what in expected:
        if args[name].shape[dim] != size:
            raise ValueError(f'ms_deform_attn: {name} has shape {_shape(args[name])} but its '
                             f'dim {dim} ({what}) must be {size}')
    if attention_weights.shape != sampling_locations.shape[:5]:
        raise ValueError(f'ms_deform_attn: attention_weights has shape '
                         f'{_shape(attention_weights)} but must be sampling_locations\' shape '
                         f'without the last dim: {tuple(sampling_locations.shape[:5])}')

    if not value.is_floating_point():
        raise TypeError(f'ms_deform_attn: value must be floating point, got {value.dtype}')
    if not (sampling_locations.dtype == attention_weights.dtype == value.dtype):
        raise TypeError(f'ms_deform_attn: value, sampling_locations and attention_weights must '
                        f'share one dtype, got {value.dtype}, {sampling_locations.dtype} and '
                        f'{attention_weights.dtype}')
    if spatial_shapes.dtype != torch.int64 or level_start_index.dtype != torch.int64:
        raise TypeError(f'ms_deform_attn: spatial_shapes and level_start_index must be int64, '
                        f'got {spatial_shapes.dtype} and {level_start_index.dtype}')
    for name, t in args.items():
        if t.device != value.device:
            raise ValueError(f'ms_deform_attn: {name} is on {t.device} but value is on '
                             f'{value.device}; all inputs must be on one device')

    if check_values:
        hw = spatial_shapes.tolist()
        starts = level_start_index.tolist()
        total = 0
        for level, ((h, w), start) in enumerate(zip(hw, starts)):
            if h < 0 or w < 0:
                raise ValueError(f'ms_deform_attn: spatial_shapes[{level}] = ({h}, {w}) must be '
                                 f'non-negative')
            if start != total:
                raise ValueError(f'ms_deform_attn: level_start_index[{level}] is {start} but the '
                                 f'levels before it hold {total} keys (level_start_index must be '
                                 f'the cumulative sum of H*W)')
            total += h * w
        if total != num_keys:
            raise ValueError(f'ms_deform_attn: value has {num_keys} keys (shape {_shape(value)}) '
                             f'but spatial_shapes {hw} sum to {total} = sum of H*W')


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor,
                   im2col_step: int = 64) -> Tensor:
    """Multi-scale deformable attention sampling: for every query and head, the attention-
    weighted sum of ``value`` sampled bilinearly at ``sampling_locations`` (Eq. 3 without
    the projections W_m, W'_m). See the module docstring for shapes.

    ``im2col_step`` is a tuning knob of the CUDA kernel kept for signature compatibility;
    any batch size works with any value. Under autocast the op computes in float32 and
    returns float32.
    """
    compiling = torch.compiler.is_compiling()
    if isinstance(value, Tensor) and torch.is_autocast_enabled(value.device.type):
        # Under autocast the op runs in float32, like grid_sample: the projections feeding
        # it come out in half precision while the reference points stay in float32.
        value, sampling_locations, attention_weights = (
            t.float() if isinstance(t, Tensor) and t.is_floating_point() else t
            for t in (value, sampling_locations, attention_weights))
    check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
               im2col_step, check_values=not compiling and not _tracing())
    use_kernel = _current_backend() == 'auto' and not torch.onnx.is_in_onnx_export()
    if use_kernel and _has_kernel(value.device):
        return torch.ops.ddetr.ms_deform_attn(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights, im2col_step)
    if use_kernel and not compiling:
        _warn_fallback(value.device)
    return ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights)


def ms_deform_attn_pytorch(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                           sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """The same op from ``F.grid_sample``: one call per level on (bs * num_heads) maps.

    Portable (any device, ONNX export) but slow and memory-hungry: it materializes every
    sampled value before the weighted sum.
    """
    bs, num_keys, num_heads, head_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if num_queries == 0 or bs == 0:
        return value.new_zeros(bs, num_queries, num_heads * head_dims)
    # grid_sample's grid is in [-1, 1]; (bs, nq, M, L, K, 2) -> (bs * M, nq, L, K, 2)
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)
    # (bs, nq, M, L, K) -> (bs * M, 1, nq, L * K)
    weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries,
                                                        num_levels * num_points)
    output = value.new_zeros(bs * num_heads, head_dims, num_queries)
    shapes = level_shapes(spatial_shapes)
    starts = level_starts(level_start_index)
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
    # (bs * M, D, nq) -> (bs, nq, M * D)
    return output.view(bs, num_heads * head_dims, num_queries).transpose(1, 2).contiguous()


if HAS_COMPILED_OP:

    @torch.library.register_fake('ddetr::ms_deform_attn')
    def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights, im2col_step=64):
        check_args(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, im2col_step, check_values=False)
        bs, _, num_heads, head_dims = value.shape
        return value.new_empty(bs, sampling_locations.shape[1], num_heads * head_dims)

    @torch.library.register_fake('ddetr::ms_deform_attn_backward')
    def _ms_deform_attn_backward_fake(value, spatial_shapes, level_start_index,
                                      sampling_locations, attention_weights, grad_output,
                                      im2col_step=64):
        check_args(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, im2col_step, check_values=False)
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
