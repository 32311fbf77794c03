"""One line naming the CPU a benchmark or profile ran on.

Two-core boxes of the same size differ most in how they compute bfloat16: with AMX tiles
oneDNN's bfloat16 matmuls run about 10x faster than with AVX-512 BF16 instructions alone
(a (5440 x 128) . (128 x 512) matmul: 0.34 against 3.7 ms), which changes where a training
step's time goes and so every speed ratio (docs/results.md lists the machine kinds: the
quick start trained 1.43x faster than the first one on an AVX-512 box, 1.29x on an AMX
one). The benchmark
and profiling tools print this line so that their numbers say which kind they come from.
"""
import os
import platform
from typing import Dict, Optional

from .optim_wrapper import cpu_has_fast_bfloat16

CPUINFO = '/proc/cpuinfo'


def read_cpuinfo(path: str = CPUINFO) -> Optional[Dict[str, str]]:
    """The first processor's fields of ``/proc/cpuinfo`` (``model name``, ``flags``, ...),
    or None where there is no such file (not Linux) or it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, sep, value = line.partition(':')
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def bfloat16_hardware(flags, fast_bfloat16: bool) -> str:
    """How this CPU multiplies bfloat16: 'AMX' or 'AVX-512 BF16' from its flags, else
    'AVX-512' (oneDNN converts to float32 in vector registers) or 'none' (emulated, many
    times slower), as ``fast_bfloat16`` (:func:`cpu_has_fast_bfloat16`, the test
    ``CPUAmpOptimWrapper`` uses to train in float32 there) says."""
    flags = set(flags)
    if 'amx_bf16' in flags and 'amx_tile' in flags:
        return 'AMX'
    if 'avx512_bf16' in flags:
        return 'AVX-512 BF16'
    return 'AVX-512' if fast_bfloat16 else 'none'


def cpu_description(cpuinfo: Optional[Dict[str, str]] = None) -> str:
    """E.g. ``CPU: Intel(R) Xeon(R) Processor, 2 logical cores, bfloat16 hardware: AMX``.
    ``cpuinfo`` defaults to :func:`read_cpuinfo`'s; without one the bfloat16 hardware is
    'unknown'."""
    info = read_cpuinfo() if cpuinfo is None else cpuinfo
    name = (info or {}).get('model name') or platform.processor() or platform.machine()
    hardware = (bfloat16_hardware(info['flags'].split(), cpu_has_fast_bfloat16())
                if info and 'flags' in info else 'unknown')
    return (f'CPU: {name or "unknown"}, {os.cpu_count()} logical cores, '
            f'bfloat16 hardware: {hardware}')
