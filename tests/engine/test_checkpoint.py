"""ddetr.engine.checkpoint: weights-only loading with mmengine's types allow-listed; a
checkpoint that would run code is refused unless the user opts in."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from ddetr.engine.checkpoint import (TRUST_ENV, UntrustedCheckpointError,
                                     load_checkpoint_file)


class AsksGetattr:
    """Unpickling this calls getattr(HistoryBuffer, name)."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return getattr, (HistoryBuffer, self.name)


def test_mmengine_types_load_without_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    buffer = HistoryBuffer()
    for v in (1.0, 2.0, 4.0):
        buffer.update(v)
    path = tmp_path / 'runner.pth'
    torch.save({'state_dict': {'w': torch.arange(3.)},
                'meta': dict(seed=np.int64(7), iter=12, history=np.arange(3.)),
                'message_hub': dict(log_scalars={'loss': buffer})}, path)
    ckpt = load_checkpoint_file(str(path))
    assert ckpt['meta']['seed'] == 7 and ckpt['meta']['iter'] == 12
    np.testing.assert_array_equal(ckpt['meta']['history'], np.arange(3.))
    loaded = ckpt['message_hub']['log_scalars']['loss']
    assert isinstance(loaded, HistoryBuffer)
    assert loaded.mean() == pytest.approx(7 / 3) and loaded.statistics('max') == 4.0


def test_a_pickle_that_runs_code_is_refused_with_no_side_effect(crafted_checkpoint):
    path, marker = crafted_checkpoint
    with pytest.raises(UntrustedCheckpointError) as e:
        load_checkpoint_file(path)
    assert 'makedirs' in str(e.value) and 'crafted.pth' in str(e.value)
    assert '--trust-checkpoint' in str(e.value) and TRUST_ENV in str(e.value)
    assert not marker.exists()


def test_opting_in_loads_the_full_pickle(crafted_checkpoint, monkeypatch):
    path, marker = crafted_checkpoint
    monkeypatch.setenv(TRUST_ENV, '1')
    load_checkpoint_file(path)
    assert marker.exists()  # the user trusted the file, and it ran


@pytest.mark.parametrize('name', ['__subclasses__', '__init__', 'register_statistics'])
def test_getattr_is_limited_to_history_buffer_statistics(tmp_path, monkeypatch, name):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    torch.save({'ok': AsksGetattr('mean'), 'bad': AsksGetattr(name)}, tmp_path / 'g.pth')
    with pytest.raises(UntrustedCheckpointError):
        load_checkpoint_file(str(tmp_path / 'g.pth'))
    torch.save({'ok': AsksGetattr('mean')}, tmp_path / 'ok.pth')
    assert load_checkpoint_file(str(tmp_path / 'ok.pth'))['ok'] is HistoryBuffer.mean


def test_importing_ddetr_leaves_mmengines_loader_alone():
    code = ('from mmengine.runner.checkpoint import CheckpointLoader as L; before = '
            'L._schemes[""]; import ddetr.engine, ddetr.models, ddetr.apis; '
            'assert L._schemes[""] is before, L._schemes[""]')
    subprocess.run([sys.executable, '-c', code], check=True)
