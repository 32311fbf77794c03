"""tools/analysis/plot_curves.py on two small real runs (tools/train.py on a few generated
images): a Deformable DETR row and the DETR row of the mini sweep."""
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import cv2
import pytest

from ddetr.errors import DataError

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    'plot_curves', osp.join(ROOT, 'tools', 'analysis', 'plot_curves.py'))
plot_curves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_curves)


def _config(tmp_path, name, base):
    data_root = str(tmp_path / 'data') + '/'
    synthetic = 'dict(num_train=4, num_val=2, seed=1, min_side=64, max_side=96, max_objects=3)'
    path = tmp_path / f'{name}.py'
    path.write_text(f"""
_base_ = {osp.join(ROOT, 'configs', 'quickstart', base)!r}
data_root = {data_root!r}
synthetic = {synthetic}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, synthetic=synthetic))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, synthetic=synthetic))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters=4, val_interval=2)
default_hooks = dict(checkpoint=dict(interval=1000), logger=dict(interval=1))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(vis_backends=vis_backends)
""")
    return str(path)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('curves')
    dirs = []
    for name, base in (('mini_ddetr', 'table1/ddetr_tiny.py'), ('mini_detr', 'detr/detr_tiny.py')):
        work_dir = str(tmp_path / 'runs' / name)
        proc = subprocess.run(
            [sys.executable, 'tools/train.py', _config(tmp_path, name, base), '--work-dir',
             work_dir], cwd=ROOT, capture_output=True, text=True, timeout=300,
            env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert proc.returncode == 0, proc.stderr[-3000:]
        dirs.append(work_dir)
    return dirs


def test_validation_curves_of_two_runs(runs, tmp_path):
    out = str(tmp_path / 'curves.png')
    drawn = plot_curves.plot(runs, out, metric='coco/bbox_mAP')
    assert list(drawn) == ['mini_ddetr', 'mini_detr']  # labelled by config name
    for xs, ys in drawn.values():
        assert xs == [2.0, 4.0]  # validation every 2 of 4 iterations
        assert all(0.0 <= y <= 1.0 for y in ys)
    image = cv2.imread(out)
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_training_loss_curves(runs, tmp_path):
    out = str(tmp_path / 'loss.png')
    drawn = plot_curves.plot(runs, out, keys=['loss', 'loss_cls'],
                             labels=['deformable', 'detr'])
    assert list(drawn) == ['deformable: loss', 'deformable: loss_cls', 'detr: loss',
                           'detr: loss_cls']
    assert all(xs == [1.0, 2.0, 3.0, 4.0] for xs, _ in drawn.values())
    assert cv2.imread(out) is not None


def test_missing_metric_is_named_with_the_ones_there(runs, tmp_path):
    out = str(tmp_path / 'none.png')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'analysis', 'plot_curves.py'), *runs,
         '--metric', 'coco/bbox_AP', '--out', out], capture_output=True, text=True)
    assert proc.returncode == 1 and not osp.exists(out)
    assert 'no validation metric "coco/bbox_AP"' in proc.stderr
    assert 'coco/bbox_mAP_50' in proc.stderr and runs[0] in proc.stderr
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'analysis', 'plot_curves.py'), runs[0],
         '--x', 'epoch', '--out', out], capture_output=True, text=True)
    assert proc.returncode == 1 and 'no epoch' in proc.stderr
    with pytest.raises(DataError, match='no such run folder'):
        plot_curves.plot([str(tmp_path / 'nothing')], out)


def test_resumed_run_parts_are_joined(tmp_path):
    """A resumed run has one scalars.json per start; mmengine's default logs validations
    at step 0: they count at the iteration trained before them."""
    import json
    for stamp, records in (
            ('20240101_000000', [{'iter': 1, 'loss': 3.0, 'step': 1},
                                 {'coco/bbox_mAP': 0.1, 'step': 0}]),
            ('20240102_000000', [{'iter': 2, 'loss': 2.0, 'step': 2},
                                 {'coco/bbox_mAP': 0.2, 'step': 0}])):
        vis = tmp_path / 'run' / stamp / 'vis_data'
        vis.mkdir(parents=True)
        (vis / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in records))
    drawn = plot_curves.plot([str(tmp_path / 'run')], str(tmp_path / 'c.png'))
    assert drawn == {'run': ([1.0, 2.0], [0.1, 0.2])}
