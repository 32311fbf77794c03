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


def test_unknown_environment_value_is_an_error(monkeypatch):
    from ddetr.engine import cpu_memory
    monkeypatch.setattr(cpu_memory, '_applied', None)  # not applied yet in this process
    monkeypatch.setenv('DDETR_KEEP_FREED_MEMORY', 'off')
    with pytest.raises(ValueError, match="DDETR_KEEP_FREED_MEMORY='off': expected 0"):
        cpu_memory.keep_freed_memory()


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_tools_stop_on_a_bad_value_with_one_line(tool, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [os.path.join(root, 'tools', tool),
            os.path.join(root, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')]
    if tool == 'test.py':
        checkpoint = tmp_path / 'unread.pth'  # exists; the check comes before any loading
        checkpoint.write_bytes(b'')
        args.append(str(checkpoint))
    proc = subprocess.run([sys.executable] + args, capture_output=True, text=True, cwd=root,
                          env=dict(os.environ, DDETR_KEEP_FREED_MEMORY='off'), timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"{tool}: error: DDETR_KEEP_FREED_MEMORY='off': expected 0 (glibc malloc defaults) "
        f"or 1 (keep freed memory, the default)")
    assert 'Traceback' not in proc.stderr
