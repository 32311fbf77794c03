"""Every tool that reads a checkpoint takes a .safetensors file: tools/test.py (the same
predictions as from the .pth), load_from in tools/train.py (fine-tuning),
tools/deployment/export_onnx.py, and the converters' input (an MMDetection or
original-release checkpoint saved as safetensors).
On the tiny generated split of the synthetic dataset with a shrunken quick-start model.
(tools/demo.py and DetInferencer: tests/tools/test_demo.py, tests/apis/.)"""
import os.path as osp
import pickle

import pytest
import torch

from ddetr.apis import init_detector
from ddetr.engine.checkpoint import save_safetensors

from test_train_test import ROOT, run, write_config

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """The tiny config, and one set of random weights as .pth and as .safetensors."""
    tmp_path = tmp_path_factory.mktemp('safetensors')
    config = write_config(tmp_path, max_iters=1, checkpoint_interval=1)
    model = init_detector(config, None, seed=4)
    meta = {'dataset_meta': {'classes': ('circle', 'square', 'triangle', 'star', 'cross',
                                         'ring')}}
    pth, safetensors = str(tmp_path / 'tiny.pth'), str(tmp_path / 'tiny.safetensors')
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, pth)
    save_safetensors(safetensors, model.state_dict(), meta)
    return dict(tmp_path=tmp_path, config=config, pth=pth, safetensors=safetensors)


def predictions(path):
    with open(path, 'rb') as f:  # written by this test's tools/test.py run
        return pickle.load(f)


def test_test_tool_gives_the_same_predictions_from_safetensors(setup):
    tmp_path = setup['tmp_path']
    for name in ('pth', 'safetensors'):
        run(['tools/test.py', setup['config'], setup[name], '--work-dir',
             str(tmp_path / f'test_{name}'), '--out', str(tmp_path / f'{name}.pkl')])
    from_pth = predictions(tmp_path / 'pth.pkl')
    from_safetensors = predictions(tmp_path / 'safetensors.pkl')
    assert len(from_pth) == len(from_safetensors) == 4  # the val images
    for a, b in zip(from_pth, from_safetensors):
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(a['pred_instances'][key], b['pred_instances'][key]), key


def test_load_from_safetensors_fine_tunes(setup):
    """Weights of a 3-class model as load_from of the 6-class config: everything loads but
    the classification layers, which are re-initialized."""
    tmp_path = setup['tmp_path']
    three = str(tmp_path / 'three_classes.safetensors')
    save_safetensors(three, init_detector(setup['config'], None, num_classes=3).state_dict())
    proc = run(['tools/train.py', setup['config'], '--work-dir', str(tmp_path / 'finetune'),
                '--cfg-options', f'load_from={three}'])
    log = proc.stdout + proc.stderr
    assert f'load_from {three}: ' in log
    assert 're-initialized (3 classes in the checkpoint, 6 in the model' in log
    assert osp.isfile(tmp_path / 'finetune' / 'iter_1.pth')


def test_onnx_export_reads_safetensors(setup, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'export_onnx', osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py'))
    export_onnx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_onnx)
    out = setup['tmp_path'] / 'tiny.onnx'
    assert export_onnx.main([setup['config'], setup['safetensors'], '--out', str(out),
                             '--shape', '128', '160']) in (0, None)
    assert out.stat().st_size > 0
    assert f'({setup["safetensors"]})' in capsys.readouterr().out


# ---------------------------------------------------------------------- the converters
@pytest.fixture(scope='module')
def mmdet_state_dict(setup):
    from ddetr.config import load_config
    from ddetr.converters.mmdet_equivalent import build_mmdet_model
    cfg = load_config(setup['config'], ['model.as_two_stage=False'], no_downloads=True)
    return build_mmdet_model(cfg.model.to_dict(), seed=0).state_dict()


def test_mmdet_converter_reads_safetensors(setup, mmdet_state_dict, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'mmdet2ddetr', osp.join(ROOT, 'tools', 'model_converters', 'mmdet2ddetr.py'))
    mmdet2ddetr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mmdet2ddetr)
    tmp_path = setup['tmp_path']
    classes = ['a', 'b', 'c', 'd', 'e', 'f']
    torch.save({'state_dict': mmdet_state_dict, 'meta': {}}, tmp_path / 'mmdet.pth')
    save_safetensors(str(tmp_path / 'mmdet.safetensors'), mmdet_state_dict,
                     {'dataset_meta': {'classes': classes}})
    for name in ('pth', 'safetensors'):
        assert mmdet2ddetr.main([str(tmp_path / f'mmdet.{name}'),
                                 str(tmp_path / f'converted_{name}.pth')]) == 0
    from_pth = torch.load(tmp_path / 'converted_pth.pth', weights_only=True)
    from_safetensors = torch.load(tmp_path / 'converted_safetensors.pth', weights_only=True)
    assert from_safetensors['state_dict'].keys() == from_pth['state_dict'].keys()
    for key, value in from_pth['state_dict'].items():
        assert torch.equal(from_safetensors['state_dict'][key], value), key
    # the safetensors metadata is the checkpoint's meta: its class names carry over
    assert from_safetensors['meta']['dataset_meta'] == {'classes': classes}


def test_converters_read_each_layout_from_safetensors(tmp_path):
    """load_torch_file gives what torch.load gives for the same checkpoint as .pth: the
    original release's {'model', 'args'} (args in the metadata), mmengine's
    {'state_dict', 'meta'}, or a bare state dict."""
    from ddetr.converters.common import load_torch_file
    from ddetr.converters.official import load_official_checkpoint, variant_from
    from ddetr.errors import ConversionError
    tensors = {'transformer.level_embed': torch.randn(4, 8),
               'class_embed.0.weight': torch.randn(91, 8)}
    args = dict(with_box_refine=False, two_stage=False, num_feature_levels=4,
                num_queries=300)
    save_safetensors(str(tmp_path / 'official.safetensors'), tensors, {'args': args})
    state_dict, loaded_args = load_official_checkpoint(str(tmp_path / 'official.safetensors'))
    assert loaded_args == args and torch.equal(state_dict['class_embed.0.weight'],
                                               tensors['class_embed.0.weight'])
    assert variant_from(state_dict, loaded_args)['num_queries'] == 300
    save_safetensors(str(tmp_path / 'bare.safetensors'), tensors)
    bare = load_torch_file(str(tmp_path / 'bare.safetensors'))
    assert bare.keys() == tensors.keys()
    assert load_official_checkpoint(str(tmp_path / 'bare.safetensors'))[1] is None
    save_safetensors(str(tmp_path / 'mmengine.safetensors'), tensors, {'epoch': 12})
    assert load_torch_file(str(tmp_path / 'mmengine.safetensors'))['meta'] == {'epoch': 12}
    (tmp_path / 'cut.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{')
    with pytest.raises(ConversionError, match='cut.safetensors: not a readable safetensors'):
        load_torch_file(str(tmp_path / 'cut.safetensors'))
