"""The op's argument rules, for the paths that are not the C++ kernel: the fake (meta)
kernel that ``torch.compile`` and tracing run, and the grid_sample fallback. The compiled
op runs the same rules, with the same messages, in C++ (``csrc/ms_deform_attn/
ms_deform_attn_checks.cpp``)."""
from typing import Optional, Sequence

import torch
from torch import Tensor

from .extension import tracing

__all__ = ['check_python_args', 'check_metadata', 'check_level_shapes', 'level_shapes',
           'level_starts', 'values_on_host']


def level_shapes(spatial_shapes: Tensor) -> list:
    """(L, 2) int64 -> [(H_l, W_l)] to loop over levels: Python ints, or 0-d tensors while
    tracing (an ONNX export), so that sizes stay symbolic and ``--dynamic`` exports work."""
    if tracing():
        return [(spatial_shapes[level, 0], spatial_shapes[level, 1])
                for level in range(len(spatial_shapes))]
    return [tuple(hw) for hw in spatial_shapes.tolist()]


def level_starts(level_start_index: Tensor) -> list:
    """(L,) int64 -> [start_l], Python ints or, while tracing, 0-d tensors (see above)."""
    if tracing():
        return list(level_start_index.unbind(0))
    return level_start_index.tolist()


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_python_args(args: dict, im2col_step) -> None:
    """Checks the C++ op cannot make with our messages: non-tensors and im2col_step's type."""
    for name, t in args.items():
        if not isinstance(t, Tensor):
            raise TypeError(f'ms_deform_attn: {name} must be a Tensor, got {type(t).__name__}')
    if not isinstance(im2col_step, int) or isinstance(im2col_step, bool) or im2col_step <= 0:
        raise ValueError(f'ms_deform_attn: im2col_step must be a positive int, got {im2col_step!r}')


def _check(check, cond, message) -> None:
    # (Under torch.jit.trace, the tracing that FLOP counters and ONNX export use, sizes are
    # 0-d tensors: read them as the bool they are.)
    check(bool(cond) if isinstance(cond, Tensor) else cond, message)


def check_metadata(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor) -> None:
    """Ranks, sizes, dtypes and devices: the C++ checks' rules with the same messages, as
    ``torch._check_*`` so that they also hold (and trace) on fake tensors. Reads no values.

    Used by the fake kernel and the fallback; the compiled op runs its C++ twin.
    """
    args = dict(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                sampling_locations=sampling_locations, attention_weights=attention_weights)
    layouts = dict(value=(4, '(bs, num_keys, num_heads, head_dims)'),
                   spatial_shapes=(2, '(num_levels, 2)'),
                   level_start_index=(1, '(num_levels,)'),
                   sampling_locations=(6, '(bs, num_queries, num_heads, num_levels, '
                                          'num_points, 2)'),
                   attention_weights=(5, '(bs, num_queries, num_heads, num_levels, '
                                         'num_points)'))
    for name, (rank, layout) in layouts.items():
        t = args[name]
        _check(torch._check_value, t.dim() == rank,
               lambda: f'ms_deform_attn: {name} must be {rank}-D {layout}, got shape '
                       f'{_shape(t)}')
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
        t = args[name]
        _check(torch._check_value, t.shape[dim] == size,
               lambda: f'ms_deform_attn: {name} has shape {_shape(t)} but its dim {dim} '
                       f'({what}) must be {size}')
    _check(torch._check_value, attention_weights.shape == sampling_locations.shape[:5],
           lambda: f'ms_deform_attn: attention_weights has shape {_shape(attention_weights)} '
                   f'but must be sampling_locations\' shape without the last dim: '
                   f'{tuple(sampling_locations.shape[:5])}')
    _check(torch._check_type, value.is_floating_point(),
           lambda: f'ms_deform_attn: value must be floating point, got {value.dtype}')
    _check(torch._check_type, sampling_locations.dtype == attention_weights.dtype == value.dtype,
           lambda: f'ms_deform_attn: value, sampling_locations and attention_weights must share '
                   f'one dtype, got {value.dtype}, {sampling_locations.dtype} and '
                   f'{attention_weights.dtype}')
    _check(torch._check_type,
           spatial_shapes.dtype == torch.int64 and level_start_index.dtype == torch.int64,
           lambda: f'ms_deform_attn: spatial_shapes and level_start_index must be int64, got '
                   f'{spatial_shapes.dtype} and {level_start_index.dtype}')
    for name, t in args.items():
        _check(torch._check_value, t.device == value.device,
               lambda: f'ms_deform_attn: {name} is on {t.device} but value is on '
                       f'{value.device}; all inputs must be on one device')


def check_level_shapes(spatial_shapes: Sequence[Sequence[int]], num_keys: int,
                       level_start_index: Optional[Sequence[int]] = None) -> None:
    """The value-dependent rules, on Python ints: every (H, W) non-negative, the levels'
    starts the cumulative sum of H*W, and sum of H*W == ``num_keys``. For callers that know
    the shapes as ints (once per forward, no device sync); the fallback runs it on CPU tensors.
    """
    hw = [(int(h), int(w)) for h, w in spatial_shapes]
    total = 0
    for level, (h, w) in enumerate(hw):
        if h < 0 or w < 0:
            raise ValueError(f'ms_deform_attn: spatial_shapes[{level}] = ({h}, {w}) must be '
                             f'non-negative')
        if level_start_index is not None and int(level_start_index[level]) != total:
            raise ValueError(f'ms_deform_attn: level_start_index[{level}] is '
                             f'{int(level_start_index[level])} but the levels before it hold '
                             f'{total} keys (level_start_index must be the cumulative sum of H*W)')
        total += h * w
    if total != num_keys:
        raise ValueError(f'ms_deform_attn: value has {num_keys} keys but spatial_shapes {hw} sum '
                         f'to {total} = sum of H*W')


def values_on_host(*tensors: Tensor) -> bool:
    """True when reading the tensors costs no device sync and no tracing is going on."""
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return all(t.device.type == 'cpu' and not isinstance(t, torch._subclasses.FakeTensor)
               for t in tensors)
