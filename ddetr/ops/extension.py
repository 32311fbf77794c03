"""ddetr's compiled extension ``ddetr._C``, and which implementation of the op runs.

``ddetr._C`` holds the op's C++ CPU kernel and, when built with CUDA, its CUDA kernel
(plus the counter-based dropout). It may be missing (built with ``DDETR_WITH_OPS=0``, or
not built yet): then the pure-PyTorch fallback runs and ``backend_info()`` says why.

The backend is chosen at run time, on every call: ``msda_backend(name)`` inside a block,
else ``$DDETR_MSDA_BACKEND``, else ``auto`` (the compiled op where it has a kernel for the
device, else the fallback with one warning). ``compiled`` is the compiled op or an error,
``pytorch`` always the fallback.
"""
import contextlib
import os
import warnings
from typing import Iterator, Optional

import torch

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

__all__ = ['HAS_COMPILED_OP', 'BACKEND_ENV', 'BACKENDS', 'selected_backend', 'msda_backend',
           'backend_info', 'release_grad_cache', 'has_kernel', 'warn_fallback', 'tracing']

#: Environment variable selecting the backend at run time (read on every call).
BACKEND_ENV = 'DDETR_MSDA_BACKEND'
#: ``auto``: the compiled op where it has a kernel for the device, else the fallback;
#: ``compiled``: the compiled op or an error; ``pytorch``: always the grid_sample fallback.
BACKENDS = ('auto', 'compiled', 'pytorch')

_override: Optional[str] = None  # set by msda_backend(), wins over the environment variable
_warned = False


def validate_backend(name, source: str) -> str:
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
    return validate_backend(name.strip().lower(), f'${BACKEND_ENV}={name!r}')


@contextlib.contextmanager
def msda_backend(name: str) -> Iterator[str]:
    """Use backend ``name`` (one of ``BACKENDS``) inside the block, whatever the env var says."""
    global _override
    name = validate_backend(name, 'msda_backend()')
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


def has_kernel(device: torch.device) -> bool:
    """Whether the compiled op has a kernel for ``device``."""
    if not HAS_COMPILED_OP:
        return False
    if device.type == 'cpu':
        return True
    return device.type == 'cuda' and _WITH_CUDA


def warn_fallback(device: torch.device) -> None:
    """Warn once per process that the slower fallback runs, and why."""
    global _warned
    if not _warned:
        _warned = True
        reason = (f'ddetr._C could not be imported ({_IMPORT_ERROR})'
                  if not HAS_COMPILED_OP else f'ddetr._C has no kernel for {device.type}')
        warnings.warn(f'ms_deform_attn: {reason}; using the slower pure-PyTorch '
                      f'grid_sample implementation', stacklevel=3)


def tracing() -> bool:
    """TorchScript tracing or an ONNX export is going on."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
