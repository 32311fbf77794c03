"""keep_freed_memory: a training loop's second iteration reuses the first one's memory
instead of faulting in fresh pages (glibc only; run in a subprocess, as it changes the
process's malloc)."""
import os
import subprocess
import sys

import pytest

from ddetr.engine.cpu_memory import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason='needs glibc malloc')

SCRIPT = r'''
import resource, sys
import torch
from ddetr.engine.cpu_memory import keep_freed_memory
print(keep_freed_memory())
def iteration():  # 50 tensors of 4 MiB, written, then all freed (a step's activations)
    tensors = [torch.ones(1 << 20) for _ in range(50)]
    del tensors
iteration()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
iteration()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _faults_of_second_iteration(env_value):
    env = dict(os.environ, DDETR_KEEP_FREED_MEMORY=env_value)
    out = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True,
                         env=env, check=True).stdout.splitlines()
    return out[0], int(out[-1])


def test_second_iteration_reuses_memory():
    line, faults = _faults_of_second_iteration('1')
    assert 'keeps freed blocks' in line
    pages = 50 * (4 << 20) // 4096
    assert faults < pages // 20, f'{faults} page faults for {pages} pages of reused memory'


def test_off_by_environment_variable():
    line, faults = _faults_of_second_iteration('0')
    assert 'DDETR_KEEP_FREED_MEMORY=0' in line
    pages = 50 * (4 << 20) // 4096
    # glibc's defaults hand the freed heap back, so the pages fault in again
    assert faults > pages // 2


def test_applied_once_per_process():
    from ddetr.engine.cpu_memory import keep_freed_memory
    assert keep_freed_memory() is keep_freed_memory()
