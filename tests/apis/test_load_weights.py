"""load_weights refuses a checkpoint that leaves most of the model unloaded, with a short
message naming the config and the converters."""
import os.path as osp

import pytest
import torch

from ddetr.apis.inference import build_detector, load_weights
from ddetr.config import load_config
from ddetr.errors import CheckpointError

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
TINY = ['model.encoder.num_layers=1', 'model.decoder.num_layers=1', 'model.num_queries=5']


@pytest.fixture(scope='module')
def model():
    cfg = load_config(QUICKSTART, TINY)
    model = build_detector(cfg)
    model.cfg = cfg
    return model


@pytest.mark.parametrize('state_dict,hint', [
    ({}, 'the checkpoint is empty'),
    ({'transformer.level_embed': torch.zeros(4, 256),
      'backbone.0.body.conv1.weight': torch.zeros(64, 3, 7, 7)},
     'original Deformable DETR release'),
    ({'model.level_embed': torch.zeros(4, 256),
      'model.backbone.conv_encoder.model.conv1.weight': torch.zeros(64, 3, 7, 7)},
     "Hugging Face transformers' DeformableDetrForObjectDetection"),
])
def test_refuses_unloaded_checkpoint_with_converter_hint(model, tmp_path, state_dict, hint):
    path = str(tmp_path / 'bad.pth')
    torch.save(dict(state_dict=state_dict, meta={}), path)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    message = str(info.value)
    assert hint in message
    assert 'ddetr_tiny_synthetic.py' in message
    assert 'official2ddetr.py' in message and 'mmdet2ddetr.py' in message
    assert 'hf2ddetr.py' in message
    assert f'0 of its {len(model.state_dict())}' in message
    assert len(message) < 1500


def test_own_checkpoint_still_loads(model, tmp_path):
    path = str(tmp_path / 'good.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={'x': 1}), path)
    assert load_weights(model, path) == {'x': 1}


def test_refuses_an_unconverted_mmdet_checkpoint_naming_mmdetection(tmp_path):
    from ddetr.converters.mmdet_equivalent import build_mmdet_model
    cfg = load_config(QUICKSTART, TINY + ['model.as_two_stage=False'])
    mmdet_model = build_mmdet_model(cfg.model.to_dict(), seed=0)
    model = build_detector(cfg)
    model.cfg = cfg
    path = str(tmp_path / 'mmdet.pth')
    torch.save(dict(state_dict=mmdet_model.state_dict(), meta={}), path)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    assert 'its keys are those of MMDetection, never converted' in str(info.value)
