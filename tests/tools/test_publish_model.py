"""tools/misc/publish_model.py: a checkpoint as the Runner writes it (optimizer, message hub,
schedulers, hook messages) becomes OUT-<hash8>.pth and OUT-<hash8>.safetensors with only
the weights and the meta, both of which load back with identical weights."""
import hashlib
import importlib.util
import os
import os.path as osp
import re

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from ddetr.apis import DetInferencer, init_detector
from ddetr.engine.checkpoint import load_checkpoint_file

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

_spec = importlib.util.spec_from_file_location(
    'ddetr_publish_model', osp.join(ROOT, 'tools', 'misc', 'publish_model.py'))
publish_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(publish_model)

pytestmark = pytest.mark.usefixtures('one_thread')
CLASSES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring')


@pytest.fixture(scope='module')
def trained(tiny_config, tmp_path_factory):
    """What mmengine's Runner saves: weights, meta, optimizer, schedulers, message hub."""
    model = init_detector(tiny_config, None, seed=1)
    buffer = HistoryBuffer()
    buffer.update(1.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    checkpoint = {
        'meta': {'epoch': 0, 'iter': 2, 'seed': np.int64(7), 'cfg': open(tiny_config).read(),
                 'experiment_name': 'tiny_20261201_101500', 'time': '20261201_101600',
                 'mmengine_version': '0.10.7',
                 'dataset_meta': {'classes': CLASSES, 'palette': [(220, 20, 60)] * 6},
                 'hook_msgs': {'last_ckpt': '/work_dirs/tiny/iter_2.pth'}},
        'state_dict': model.state_dict(),
        'message_hub': {'log_scalars': {'train/loss': buffer}, 'runtime_info': {'iter': 2}},
        'optimizer': optimizer.state_dict(),
        'param_schedulers': [{'last_epoch': 2}],
    }
    path = tmp_path_factory.mktemp('work') / 'iter_2.pth'
    torch.save(checkpoint, path)
    return str(path), model.state_dict()


def published(folder, stem='ddetr_tiny'):
    names = sorted(os.listdir(folder))
    assert len(names) == 2 and all(re.fullmatch(rf'{stem}-[0-9a-f]{{8}}\.(pth|safetensors)', n)
                                   for n in names), names
    return [str(folder / n) for n in names]  # .pth, .safetensors


def test_publish_keeps_weights_and_meta_only(trained, tmp_path, capsys):
    src, state_dict = trained
    out = tmp_path / 'out'
    out.mkdir()
    assert publish_model.main([src, str(out / 'ddetr_tiny.pth')]) == 0
    pth, safetensors = published(out)
    # named by the first 8 hex digits of the sha256 of the .pth
    digest = hashlib.sha256(open(pth, 'rb').read()).hexdigest()
    assert pth.endswith(f'ddetr_tiny-{digest[:8]}.pth')
    assert safetensors == pth[:-len('.pth')] + '.safetensors'
    printed = capsys.readouterr().out
    assert 'left out: message_hub, optimizer, param_schedulers' in printed
    assert 'config: tiny; classes: 6 (circle, square' in printed

    for path in (pth, safetensors):
        ckpt = load_checkpoint_file(path)
        assert sorted(ckpt) == ['meta', 'state_dict']
        assert ckpt['state_dict'].keys() == state_dict.keys()
        for key, value in state_dict.items():
            assert torch.equal(ckpt['state_dict'][key], value), (path, key)
        meta = ckpt['meta']
        assert 'hook_msgs' not in meta
        assert meta['config_name'] == 'tiny' and meta['iter'] == 2 and meta['seed'] == 7
        assert list(meta['dataset_meta']['classes']) == list(CLASSES)
        assert 'num_queries=10' in meta['cfg']


def test_published_safetensors_detects_as_the_training_checkpoint(trained, tiny_config,
                                                                  tmp_path):
    src, _ = trained
    publish_model.main([src, str(tmp_path / 'ddetr_tiny')])
    _, safetensors = published(tmp_path)
    image = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    before = DetInferencer(tiny_config, src, 'cpu')
    after = DetInferencer(tiny_config, safetensors, 'cpu')
    assert list(after.dataset_meta['classes']) == list(CLASSES)
    assert after(image)['predictions'] == before(image)['predictions']


def test_publish_mistakes_stop_in_one_line(trained, tmp_path, capsys):
    src, _ = trained
    for argv, expected in (
            ([str(tmp_path / 'missing.pth'), str(tmp_path / 'o.pth')], 'does not exist'),
            ([src, str(tmp_path / 'no' / 'such' / 'o.pth')], 'does not exist'),
    ):
        with pytest.raises(SystemExit) as exit_info:
            publish_model.main(argv)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith('publish_model.py: error: ') and expected in err
    assert not any(n.startswith('o') for n in os.listdir(tmp_path))
