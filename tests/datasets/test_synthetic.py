"""The synthetic shapes generator and its dataset class, read and evaluated like COCO."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmdet.evaluation import CocoMetric

from ddetr.datasets import SYNTHETIC_CLASSES, SyntheticShapesDataset, ensure_synthetic_coco
from ddetr.datasets.synthetic import MANIFEST, _image_rng, render_image
from ddetr.errors import DataError
from ddetr.registry import DATASETS
from ddetr.setup_env import register_all_modules

TINY = dict(num_train=4, num_val=3, seed=3, min_side=64, max_side=96, progress=False)


def _tree(root):
    """Relative path -> bytes of every generated file."""
    files = {}
    for d in ('train', 'val', 'annotations'):
        for name in sorted(os.listdir(osp.join(root, d))):
            with open(osp.join(root, d, name), 'rb') as f:
                files[f'{d}/{name}'] = f.read()
    return files


def test_layout_and_byte_reproducibility(tmp_path):
    a = ensure_synthetic_coco(str(tmp_path / 'a'), **TINY)
    b = ensure_synthetic_coco(str(tmp_path / 'b'), **TINY)
    tree_a = _tree(a.root)
    assert sorted(tree_a) == [
        'annotations/instances_train.json', 'annotations/instances_val.json',
        'train/000000.jpg', 'train/000001.jpg', 'train/000002.jpg', 'train/000003.jpg',
        'val/000000.jpg', 'val/000001.jpg', 'val/000002.jpg']
    assert tree_a == _tree(b.root)
    c = ensure_synthetic_coco(str(tmp_path / 'c'), **dict(TINY, seed=4))
    assert _tree(c.root)['val/000000.jpg'] != tree_a['val/000000.jpg']


def test_annotation_contract(tmp_path):
    paths = ensure_synthetic_coco(str(tmp_path), **TINY)
    with open(paths.val_ann_file) as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == list(SYNTHETIC_CLASSES)
    sizes = {img['id']: (img['width'], img['height']) for img in coco['images']}
    assert len(sizes) == 3
    for w, h in sizes.values():
        assert 64 <= w <= 96 and 64 <= h <= 96
    for ann in coco['annotations']:
        x, y, bw, bh = ann['bbox']
        w, h = sizes[ann['image_id']]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        assert ann['area'] == pytest.approx(bw * bh) and ann['iscrowd'] == 0
        assert 1 <= ann['category_id'] <= len(SYNTHETIC_CLASSES)


def test_reuse_regenerate_and_refuse(tmp_path):
    root = str(tmp_path / 'data')
    paths = ensure_synthetic_coco(root, **TINY)
    stamp = os.stat(paths.val_ann_file).st_mtime_ns
    ensure_synthetic_coco(root, **TINY)  # same parameters: reused
    assert os.stat(paths.val_ann_file).st_mtime_ns == stamp

    ensure_synthetic_coco(root, **dict(TINY, num_val=2))  # changed: regenerated
    assert sorted(os.listdir(paths.val_img_dir)) == ['000000.jpg', '000001.jpg']
    with open(osp.join(root, MANIFEST)) as f:
        assert json.load(f)['params']['num_val'] == 2

    os.remove(osp.join(paths.train_img_dir, '000000.jpg'))  # damaged: regenerated
    ensure_synthetic_coco(root, **dict(TINY, num_val=2))
    assert osp.isfile(osp.join(paths.train_img_dir, '000000.jpg'))

    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'keep.txt').write_text('user data')
    with pytest.raises(DataError, match='not a ddetr synthetic dataset'):
        ensure_synthetic_coco(str(foreign), **TINY)
    assert (foreign / 'keep.txt').read_text() == 'user data'


def test_default_images_meet_the_task_spec():
    """Sizes, counts, classes and occlusion over 60 default-sized images."""
    areas, counts, labels, visible = [], [], set(), []
    for i in range(60):
        img, objects = render_image(_image_rng(0, 'val', i))
        h, w = img.shape[:2]
        assert img.dtype == np.uint8 and img.shape[2] == 3 and 160 <= min(h, w) <= max(h, w) <= 320
        counts.append(len(objects))
        for obj in objects:
            x, y, bw, bh = obj['bbox']
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            areas.append(bw * bh)
            labels.add(obj['label'])
            visible.append(obj['visible'])
    areas = np.array(areas)
    assert 1 <= min(counts) and max(counts) <= 10 and max(counts) >= 7
    assert labels == set(range(len(SYNTHETIC_CLASSES)))
    small = np.mean(areas < 32 ** 2)
    large = np.mean(areas >= 96 ** 2)
    assert 0.08 < small < 0.3 and 0.15 < large < 0.5 and small + large < 0.7
    assert min(visible) >= 0.6  # occlusion is capped...
    assert np.mean(np.array(visible) < 0.99) > 0.1  # ...but happens


def test_dataset_generates_on_first_use_and_evaluates_as_coco(tmp_path):
    """A config-style dataset makes its data, loads through mmdet's pipeline, and
    pycocotools scores the ground truth as predictions at AP 1.0."""
    register_all_modules()
    root = str(tmp_path / 'shapes')
    synthetic = dict(num_train=2, num_val=3, seed=0, min_side=64, max_side=96, progress=False)
    dataset = DATASETS.build(dict(
        type='SyntheticShapesDataset', data_root=root, synthetic=synthetic,
        ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
        test_mode=True, pipeline=[
            dict(type='LoadImageFromFileSafe'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='PackDetInputs')]))
    assert isinstance(dataset, SyntheticShapesDataset)
    assert dataset.metainfo['classes'] == SYNTHETIC_CLASSES and len(dataset) == 3

    metric = CocoMetric(metric='bbox', ann_file=osp.join(root, 'annotations/instances_val.json'))
    metric.dataset_meta = dataset.metainfo
    for i in range(len(dataset)):
        item = dataset[i]
        sample = item['data_samples']
        assert item['inputs'].shape[0] == 3
        gt = sample.gt_instances
        pred = dict(bboxes=gt.bboxes.tensor, labels=gt.labels,
                    scores=torch.ones(len(gt.labels)))
        metric.process({}, [dict(pred_instances=pred, img_id=sample.img_id,
                                 ori_shape=sample.ori_shape)])
    results = metric.evaluate(len(dataset))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)


def test_dataset_needs_data_root_to_generate():
    with pytest.raises(ValueError, match='data_root'):
        SyntheticShapesDataset(synthetic=dict(num_train=1, num_val=1), ann_file='x.json')


def test_boxes_are_the_full_shape_extent(monkeypatch):
    """Every drawn shape touches all four sides of its box (as drawn, before occlusion)."""
    from ddetr.datasets import synthetic
    drawn = []
    paint = synthetic._paint
    monkeypatch.setattr(synthetic, '_paint', lambda img, alpha, x0, y0, rng: (
        drawn.append(alpha), paint(img, alpha, x0, y0, rng)))
    for i in range(15):
        _, objects = render_image(_image_rng(1, 'train', i))
        for obj, alpha in zip(objects, drawn[-len(objects):]):
            assert alpha.shape == (obj['bbox'][3], obj['bbox'][2])
            inside = alpha > 0.25
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
    assert len(drawn) > 30
