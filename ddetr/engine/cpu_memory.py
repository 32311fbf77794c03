"""Keep freed memory in the process instead of handing it back to the OS (glibc malloc).

A CPU training step allocates and frees the same tensors every iteration. glibc's
defaults hand large blocks back to the kernel when they are freed (``mmap``/``munmap``
above a threshold, trimming the top of the heap), so the next iteration's tensor of the
same size starts as untouched pages: every 4 KiB page costs a page fault and the kernel's
zeroing on its first write: 3,000-37,000 page faults a quick-start training step, a few
hundred with this setting (docs/performance.md).

:func:`keep_freed_memory` raises glibc's ``mmap`` threshold to its maximum (32 MiB) and
turns off trimming, so blocks up to 32 MiB are reused from the heap. The process keeps its
peak heap (which a training loop reaches again every iteration anyway). It changes no
result. Elsewhere than glibc it does nothing; ``DDETR_KEEP_FREED_MEMORY=0`` turns it off
(``1`` or unset: on; any other value is an error naming the variable).
"""
import ctypes
import ctypes.util
import os
import sys
from typing import Optional

from ddetr.errors import ConfigError

ENV = 'DDETR_KEEP_FREED_MEMORY'

# mallopt(3) parameters of glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
_NO_TRIM = 2**31 - 1  # an int (mallopt takes one): never trim below ~2 GiB of free top

_applied: Optional[str] = None


def _glibc():
    if not sys.platform.startswith('linux'):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError):  # musl and others have no gnu_get_libc_version
        return None
    return libc, version


def enabled() -> bool:
    """``$DDETR_KEEP_FREED_MEMORY`` read: False for 0, True for 1 or unset, else ConfigError
    (the tools call this while checking their command line, to stop with one line)."""
    setting = os.environ.get(ENV, '1').strip() or '1'
    if setting not in ('0', '1'):
        raise ConfigError(f'{ENV}={os.environ[ENV]!r}: expected 0 (glibc malloc defaults) or 1 '
                          f'(keep freed memory, the default)')
    return setting == '1'


def keep_freed_memory() -> str:
    """Apply the setting once per process; returns a line for the log saying what was done."""
    global _applied
    if _applied is not None:
        return _applied
    if not enabled():
        _applied = f'CPU memory: glibc malloc defaults kept ({ENV}=0)'
        return _applied
    found = _glibc()
    if found is None:
        _applied = 'CPU memory: not glibc, malloc settings unchanged'
        return _applied
    libc, version = found
    ok = (libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, _NO_TRIM) == 1)
    _applied = (f'CPU memory: glibc {version} malloc keeps freed blocks up to 32 MiB for reuse '
                f'(fewer page faults; {ENV}=0 turns this off)' if ok else
                f'CPU memory: glibc {version} refused the malloc settings; defaults kept')
    return _applied


def process_status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``...): the benchmarks'
    resident-set and peak measurements."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')
