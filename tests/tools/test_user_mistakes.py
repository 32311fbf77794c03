"""A user's mistakes stop every tool the same way: a non-zero exit and one
``<tool>.py: error: ...`` message naming what to change, never a traceback
(ddetr.cli.entry_point around each tool's main, ddetr.errors for the mistakes).

The tools run as the user runs them, in subprocesses, two at a time."""
import os
import os.path as osp
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = 'configs/quickstart/ddetr_tiny_synthetic.py'
CUSTOM = 'configs/custom/coco_custom_template.py'


def _mistakes(tmp):
    """name -> (command line, status, words the message must hold)."""
    weights = osp.join(tmp, 'weights.safetensors')
    notes = osp.join(tmp, 'notes.txt')
    empty_dir = osp.join(tmp, 'no_images')
    other = osp.join(tmp, 'other_model.pth')
    return {
        'train: a variable set from the command line': (
            ['tools/train.py', QUICKSTART, '--cfg-options', 'max_iters=5'], 1,
            ['train.py: error: --cfg-options max_iters=5', 'train_cfg.max_iters']),
        'train: data that is not where data_root says': (
            ['tools/train.py', CUSTOM, '--cfg-options', f'data_root={tmp}/missing/'], 1,
            ['train.py: error', 'annotations/train.json', 'check the paths in']),
        'train: --resume from a file of weights only': (
            ['tools/train.py', QUICKSTART, '--resume', weights,
             '--cfg-options', 'train_cfg.max_iters=1'], 1,
            ['train.py: error', 'holds weights only', 'load_from=']),
        'test: a checkpoint of another model': (
            ['tools/test.py', QUICKSTART, other], 1,
            ['test.py: error', 'other_model.pth', 'ddetr_tiny_synthetic.py']),
        'test: --out that is not a pickle': (
            ['tools/test.py', QUICKSTART, other, '--out', 'preds.txt'], 1,
            ['test.py: error: --out preds.txt', '.pkl']),
        'demo: a folder without images': (
            ['tools/demo.py', empty_dir, QUICKSTART, 'none', '--out', osp.join(tmp, 'vis')], 1,
            ['demo.py: error', 'no_images']),
        'export: a config that does not exist': (
            ['tools/deployment/export_onnx.py', 'configs/nope.py', 'none',
             '--out', osp.join(tmp, 'm.onnx')], 1,
            ['export_onnx.py: error', 'configs/nope.py does not exist']),
        'sweep: a folder that does not exist': (
            ['tools/sweep.py', 'configs/nope', '--print-commands'], 1,
            ['sweep.py: error: no config file or folder: configs/nope']),
        'check_dataset: an annotation file that is not JSON': (
            ['tools/misc/check_dataset.py', notes, tmp], 2,
            ['check_dataset.py: error: cannot read', 'notes.txt']),
        'benchmark_model: a misspelt config key': (
            ['tools/analysis/benchmark_model.py', '--no-memory',
             '--cfg-options', 'model.encoder.num_layerz=2'], 1,
            ['benchmark_model.py: error', "'num_layerz'", "did you mean 'num_layers'"]),
        'vis_sampling_points: an image that does not exist': (
            ['tools/analysis/vis_sampling_points.py', QUICKSTART, 'none',
             osp.join(tmp, 'nope.jpg'), '--out', osp.join(tmp, 'p.png')], 1,
            ['vis_sampling_points.py: error', 'image file not found', 'nope.jpg']),
        'official2ddetr: a file that is not a checkpoint': (
            ['tools/model_converters/official2ddetr.py', notes, osp.join(tmp, 'out.pth')], 1,
            ['official2ddetr.py: error', 'notes.txt', 'not a readable PyTorch checkpoint']),
        'hf2ddetr: a folder that is not a Hugging Face model': (
            ['tools/model_converters/hf2ddetr.py', empty_dir, osp.join(tmp, 'out.pth')], 1,
            ['hf2ddetr.py: error', 'no_images', 'config.json']),
        'onnx_demo: a model file that does not exist': (
            ['tools/deployment/onnx_demo.py', osp.join(tmp, 'nope.onnx'), notes,
             '--out', osp.join(tmp, 'o.jpg')], 1,
            ['onnx_demo.py: error', 'nope.onnx']),
        'plot_curves: a run folder that does not exist': (
            ['tools/analysis/plot_curves.py', osp.join(tmp, 'no_run'),
             '--out', osp.join(tmp, 'c.png')], 1,
            ['plot_curves.py: error', 'no such run folder']),
    }


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp('mistakes'))
    from safetensors.torch import save_file
    save_file({'w': torch.zeros(2)}, osp.join(tmp, 'weights.safetensors'))
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(1)}},
               osp.join(tmp, 'other_model.pth'))
    with open(osp.join(tmp, 'notes.txt'), 'w') as f:
        f.write('not a checkpoint, not json')
    os.makedirs(osp.join(tmp, 'no_images'))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('DDETR_TRUST_CHECKPOINTS', None)
    mistakes = _mistakes(tmp)

    def run(args):
        return subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(mistakes, pool.map(run, [m[0] for m in mistakes.values()])))
    return mistakes, procs


@pytest.mark.parametrize('mistake', list(_mistakes('TMP')))
def test_a_mistake_stops_in_one_line(outcomes, mistake):
    mistakes, procs = outcomes
    _, status, words = mistakes[mistake]
    proc = procs[mistake]
    assert proc.returncode == status, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.rindex(words[0].split(':')[0] + ': error'):]
    for word in words:
        assert word in message, (word, message)


def test_the_list_covers_every_kind_of_tool():
    mistakes = _mistakes('TMP')
    tools = {args[0].split('/')[-1] for args, _, _ in mistakes.values()}
    assert len(mistakes) >= 12 and len(tools) >= 12
    assert {'train.py', 'test.py', 'demo.py', 'export_onnx.py', 'onnx_demo.py', 'sweep.py',
            'check_dataset.py', 'benchmark_model.py', 'vis_sampling_points.py',
            'official2ddetr.py', 'hf2ddetr.py'} <= tools
