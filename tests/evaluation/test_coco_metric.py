"""Coco12Metric: the 12 standard COCO bbox metrics from pycocotools, correctly named."""
import json

import numpy as np
import pytest
import torch

from ddetr.datasets.synthetic import ensure_synthetic_coco
from ddetr.evaluation import Coco12Metric


@pytest.fixture(scope='module')
def tiny_val(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic')
    return ensure_synthetic_coco(root, num_train=1, num_val=6, seed=3, progress=False)


def _predictions_from_ground_truth(ann_file, drop_every=0):
    """One data sample per image whose predictions are its ground-truth boxes, scored by a
    descending sequence so only the first ones count for AR@1."""
    coco = json.load(open(ann_file))
    cat_ids = sorted(c['id'] for c in coco['categories'])
    samples = []
    for img in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == img['id']]
        if drop_every:
            anns = [a for i, a in enumerate(anns) if i % drop_every]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)]
        samples.append(dict(
            img_id=img['id'], ori_shape=(img['height'], img['width']),
            pred_instances=dict(
                bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                scores=torch.linspace(1.0, 0.5, len(anns)),
                labels=torch.tensor([cat_ids.index(a['category_id']) for a in anns],
                                    dtype=torch.int64))))
    return samples, coco


def _evaluate(ann_file, samples, classes):
    metric = Coco12Metric(ann_file=ann_file, metric='bbox')
    metric.dataset_meta = dict(classes=classes)
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def test_reports_all_twelve_metrics_under_coco_names(tiny_val):
    samples, coco = _predictions_from_ground_truth(tiny_val.val_ann_file)
    classes = [c['name'] for c in sorted(coco['categories'], key=lambda c: c['id'])]
    results = _evaluate(tiny_val.val_ann_file, samples, classes)
    expected = ['mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l', 'AR@1', 'AR@10',
                'AR@100', 'AR_s@100', 'AR_m@100', 'AR_l@100']
    assert sorted(results) == sorted(f'coco/bbox_{k}' for k in expected)
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)
    assert results['coco/bbox_AR@100'] == pytest.approx(1.0)
    # AR@1 counts one detection per image: with several objects per image it is below 1.
    objects_per_image = np.bincount([a['image_id'] for a in coco['annotations']])
    assert objects_per_image.max() > 1
    assert results['coco/bbox_AR@1'] < 1.0


def test_missing_detections_lower_recall(tiny_val):
    samples, coco = _predictions_from_ground_truth(tiny_val.val_ann_file, drop_every=2)
    classes = [c['name'] for c in sorted(coco['categories'], key=lambda c: c['id'])]
    results = _evaluate(tiny_val.val_ann_file, samples, classes)
    assert 0.0 < results['coco/bbox_AR@100'] < 1.0
    assert results['coco/bbox_mAP'] < 1.0


def test_rejects_settings_it_fixes():
    with pytest.raises(ValueError, match='proposal_nums'):
        Coco12Metric(ann_file=None, proposal_nums=(100,))
