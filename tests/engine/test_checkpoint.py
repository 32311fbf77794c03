"""ddetr.engine.checkpoint: weights-only loading with mmengine's types allow-listed; a
checkpoint that would run code is refused unless the user opts in; safetensors files read
as {'state_dict', 'meta'} with their JSON metadata decoded."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from ddetr.engine.checkpoint import (
    TRUST_ENV,
    UntrustedCheckpointError,
    is_safetensors,
    load_checkpoint_file,
    save_safetensors,
)
from ddetr.errors import CheckpointError


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


# ------------------------------------------------------------------------- safetensors
def test_safetensors_reads_as_state_dict_and_decoded_meta(tmp_path):
    state_dict = {'w': torch.arange(6.).view(2, 3), 'n': torch.tensor(3, dtype=torch.int64),
                  'h': torch.ones(2, dtype=torch.float16)}
    meta = {'config_name': 'ddetr_r50', 'dataset_meta': {'classes': ('a', 'b')},
            'epoch': np.int64(50), 'cfg': "model = dict(type='DeformableDETR')\n"}
    path = str(tmp_path / 'model.safetensors')
    save_safetensors(path, state_dict, meta)
    ckpt = load_checkpoint_file(path)
    assert sorted(ckpt) == ['meta', 'state_dict']
    assert ckpt['state_dict'].keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert ckpt['state_dict'][key].dtype == value.dtype
        assert torch.equal(ckpt['state_dict'][key], value), key
    # JSON both ways: tuples come back as lists, numpy numbers as numbers
    assert ckpt['meta'] == {'config_name': 'ddetr_r50', 'dataset_meta': {'classes': ['a', 'b']},
                            'epoch': 50, 'cfg': "model = dict(type='DeformableDETR')\n"}


def test_safetensors_found_by_its_header_and_moved_by_map_location(tmp_path):
    path = str(tmp_path / 'model.ckpt')  # not the usual extension
    save_safetensors(path, {'w': torch.ones(2)})
    assert is_safetensors(path)
    ckpt = load_checkpoint_file(path, map_location='meta')
    assert ckpt['state_dict']['w'].device.type == 'meta' and ckpt['meta'] == {}
    torch.save({'w': torch.ones(2)}, tmp_path / 'model.pth')
    assert not is_safetensors(str(tmp_path / 'model.pth'))


def test_tied_tensors_are_saved_and_other_writers_metadata_kept(tmp_path):
    from safetensors.torch import save_file
    shared = torch.randn(3, 4)
    path = str(tmp_path / 'tied.safetensors')
    save_safetensors(path, {'a.weight': shared, 'b.weight': shared, 'c': shared[:, 1]})
    loaded = load_checkpoint_file(path)['state_dict']
    assert torch.equal(loaded['a.weight'], shared) and torch.equal(loaded['c'], shared[:, 1])
    # a file written by another tool: plain strings that are not JSON stay strings
    save_file({'w': torch.ones(1)}, str(tmp_path / 'hf.safetensors'),
              metadata={'format': 'pt', 'n': '3'})
    assert load_checkpoint_file(str(tmp_path / 'hf.safetensors'))['meta'] == {
        'format': 'pt', 'n': 3}


def test_unreadable_safetensors_and_unstorable_meta_name_the_problem(tmp_path):
    path = tmp_path / 'cut.safetensors'
    save_safetensors(str(path), {'w': torch.ones(100)})
    path.write_bytes(path.read_bytes()[:-40])  # truncated
    with pytest.raises(CheckpointError, match=f'could not load checkpoint {path}'):
        load_checkpoint_file(str(path))
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'\x00garbage')
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_file(str(garbage))
    assert str(e.value) == (f'could not load checkpoint {garbage}: not a PyTorch or '
                            f'safetensors checkpoint (Unsupported operand 0)')
    with pytest.raises(CheckpointError, match="meta\\['hook'\\]"):
        save_safetensors(str(tmp_path / 'x.safetensors'), {'w': torch.ones(1)},
                         {'hook': object()})


def test_runner_loader_reads_safetensors(tmp_path):
    """What mmengine's Runner calls for load_from / tools/test.py (a local path)."""
    from ddetr.engine.checkpoint import _load_from_local
    path = str(tmp_path / 'model.safetensors')
    save_safetensors(path, {'w': torch.ones(2)}, {'dataset_meta': {'classes': ['x']}})
    ckpt = _load_from_local(path, map_location='cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
    assert ckpt['meta']['dataset_meta'] == {'classes': ['x']}
