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
from typing import Iterator, Optional, Sequence

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
# Read once: torch.compile cannot trace a call into the extension (fullgraph=True fails).
_WITH_CUDA = HAS_COMPILED_OP and _C.with_cuda()

__all__ = ['ms_deform_attn', 'ms_deform_attn_pytorch', 'backend_info', 'HAS_COMPILED_OP',
           'msda_backend', 'check_level_shapes', 'level_shapes', 'level_starts', 'BACKENDS',
           'BACKEND_ENV', 'release_grad_cache']

#: Environment variable selecting the backend at run time (read on every call).
BACKEND_ENV = 'DDETR_MSDA_BACKEND'
#: ``auto``: the compiled op where it has a kernel for the device, else the fallback;
#: ``compiled``: the compiled op or an error; ``pytorch``: always the grid_sample fallback.
BACKENDS = ('auto', 'compiled', 'pytorch')

_override: Optional[str] = None  # set by msda_backend(), wins over the environment variable
_warned = False

def _validate_backend(name, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f'ms_deform_attn: unknown backend {name!r} (from {source}); valid '
                         f'backends are {", ".join(BACKENDS)}')
    if name == 'compiled' and not HAS_COMPILED_OP:
        raise RuntimeError(f'ms_deform_attn: backend "compiled" requested (from {source}) but '
                           f'ddetr._C could not be imported ({_IMPORT_ERROR}); build it with '
                           f'`python setup.py build_ext --inplace` or use backend "auto" or '
                           f'"pytorch"')
    return name


def selected_backend() -> str:
    """The backend name in force: ``msda_backend()``'s, else ``$DDETR_MSDA_BACKEND``, else auto."""
    if _override is not None:
        return _override
    name = os.environ.get(BACKEND_ENV, '') or 'auto'
    return _validate_backend(name.strip().lower(), f'${BACKEND_ENV}={name!r}')


@contextlib.contextmanager
def msda_backend(name: str) -> Iterator[str]:
    """Use backend ``name`` (one of ``BACKENDS``) inside the block, whatever the env var says."""
    global _override
    name = _validate_backend(name, 'msda_backend()')
    previous, _override = _override, name
    try:
        yield name
    finally:
        _override = previous


def backend_info() -> str:
    """A line saying which implementation runs on which device, and which backend is active."""
    active = selected_backend()
    if not HAS_COMPILED_OP:
        return (f'active backend: {active}; pure-PyTorch fallback only (ddetr._C not '
                f'importable: {_IMPORT_ERROR})')
    devices = f'CPU ({_C.cpu_isa()})' + (' and CUDA' if _WITH_CUDA else '')
    return f'active backend: {active}; compiled op ddetr._C for {devices}'


def release_grad_cache() -> int:
    """Free the memory the compiled CPU backward keeps between calls, as
    ``torch.cuda.empty_cache()`` does for CUDA: value gradients of 32 MiB or more come from
    (at most two) kept blocks instead of fresh, page-faulting memory. Returns the bytes
    freed (0 without the compiled op)."""
    return _C.release_grad_cache() if _C is not None else 0


def _has_kernel(device: torch.device) -> bool:
    if not HAS_COMPILED_OP:
        return False
    if device.type == 'cpu':
        return True
    return device.type == 'cuda' and _WITH_CUDA


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


def _check_python_args(args: dict, im2col_step) -> None:
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
                   sampling_locations=(6, '(bs, num_queries, num_heads, num_levels, num_points, 2)'),
                   attention_weights=(5, '(bs, num_queries, num_heads, num_levels, num_points)'))
    for name, (rank, layout) in layouts.items():
        t = args[name]
        _check(torch._check_value, t.dim() == rank, lambda: f'ms_deform_attn: {name} must be {rank}-D '
                           f'{layout}, got shape {_shape(t)}')
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
        _check(torch._check_value, t.shape[dim] == size, lambda: f'ms_deform_attn: {name} has shape '
                           f'{_shape(t)} but its dim {dim} ({what}) must be {size}')
    _check(torch._check_value, 
        attention_weights.shape == sampling_locations.shape[:5],
        lambda: f'ms_deform_attn: attention_weights has shape {_shape(attention_weights)} but '
        f'must be sampling_locations\' shape without the last dim: '
        f'{tuple(sampling_locations.shape[:5])}')
    _check(torch._check_type, value.is_floating_point(),
                      lambda: f'ms_deform_attn: value must be floating point, got {value.dtype}')
    _check(torch._check_type, 
        sampling_locations.dtype == attention_weights.dtype == value.dtype,
        lambda: f'ms_deform_attn: value, sampling_locations and attention_weights must share one '
        f'dtype, got {value.dtype}, {sampling_locations.dtype} and {attention_weights.dtype}')
    _check(torch._check_type, 
        spatial_shapes.dtype == torch.int64 and level_start_index.dtype == torch.int64,
        lambda: f'ms_deform_attn: spatial_shapes and level_start_index must be int64, got '
        f'{spatial_shapes.dtype} and {level_start_index.dtype}')
    for name, t in args.items():
        _check(torch._check_value, t.device == value.device, lambda: f'ms_deform_attn: {name} is on '
                           f'{t.device} but value is on {value.device}; all inputs must be on '
                           f'one device')


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


def _values_on_host(*tensors: Tensor) -> bool:
    """True when reading the tensors costs no device sync and no tracing is going on."""
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return all(t.device.type == 'cpu' and not isinstance(t, torch._subclasses.FakeTensor)
               for t in tensors)


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor,
                   im2col_step: int = 64) -> Tensor:
    """Multi-scale deformable attention sampling: for every query and head, the attention-
    weighted sum of ``value`` sampled bilinearly at ``sampling_locations`` (Eq. 3 without
    the projections W_m, W'_m). See the module docstring for shapes.

    ``im2col_step`` is a tuning knob of the CUDA kernel kept for signature compatibility;
    any batch size works with any value. Under autocast the op computes in float32 and
    returns float32. The implementation follows ``selected_backend()`` (``msda_backend``,
    ``$DDETR_MSDA_BACKEND``).
    """
    _check_python_args(dict(value=value, spatial_shapes=spatial_shapes,
                            level_start_index=level_start_index,
                            sampling_locations=sampling_locations,
                            attention_weights=attention_weights), im2col_step)
    if torch.is_autocast_enabled(value.device.type):
        # Under autocast the op runs in float32, like grid_sample: the projections feeding
        # it come out in half precision while the reference points stay in float32.
        value, sampling_locations, attention_weights = (
            t.float() if t.is_floating_point() else t
            for t in (value, sampling_locations, attention_weights))
    backend = selected_backend()
    use_kernel = backend != 'pytorch' and not torch.onnx.is_in_onnx_export()
    if use_kernel and _has_kernel(value.device):
        # The C++ op checks everything itself (values only where they are on the host).
        return torch.ops.ddetr.ms_deform_attn(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights, im2col_step)
    if backend == 'compiled' and use_kernel:
        raise RuntimeError(f'ms_deform_attn: backend "compiled" has no kernel for '
                           f'{value.device.type} (ddetr._C: {backend_info()})')
    if backend == 'auto' and not torch.compiler.is_compiling() \
            and not torch.onnx.is_in_onnx_export():
        _warn_fallback(value.device)
    return ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights)


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
    if _values_on_host(spatial_shapes, level_start_index):
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
