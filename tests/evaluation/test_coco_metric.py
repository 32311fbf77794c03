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


def test_classwise_table_per_class_ap_and_ground_truth_counts(tiny_val):
    """Perfect boxes for every class but one, whose predictions are all dropped: that
    class has AP 0, the others AP 1; the counts are the annotation file's."""
    samples, coco = _predictions_from_ground_truth(tiny_val.val_ann_file)
    cats = sorted(coco['categories'], key=lambda c: c['id'])
    classes = [c['name'] for c in cats]
    counts = {c['name']: sum(a['category_id'] == c['id'] for a in coco['annotations'])
              for c in cats}
    dropped = next(name for name in classes if counts[name])  # a class with ground truth
    for sample in samples:  # remove every prediction of `dropped`
        pred = sample['pred_instances']
        keep = pred['labels'] != classes.index(dropped)
        sample['pred_instances'] = {k: v[keep] for k, v in pred.items()}
    metric = Coco12Metric(ann_file=tiny_val.val_ann_file, metric='bbox', classwise=True)
    metric.dataset_meta = dict(classes=classes)
    metric.process({}, samples)
    results = metric.evaluate(len(samples))
    assert not any('precision' in k for k in results)  # the summary keys are unchanged
    rows = {r['category']: r for r in metric.classwise_results}
    assert list(rows) == classes
    for name in classes:
        assert rows[name]['num_gts'] == counts[name]
        if not counts[name]:
            assert rows[name]['AP'] is None
        elif name == dropped:
            assert rows[name]['AP'] == rows[name]['AP50'] == rows[name]['AP75'] == 0.0
        else:
            assert rows[name]['AP'] == rows[name]['AP50'] == pytest.approx(1.0)
    # the mean of the per-class APs is COCO's AP
    aps = [r['AP'] for r in rows.values() if r['AP'] is not None]
    assert results['coco/bbox_mAP'] == pytest.approx(np.mean(aps), abs=1e-3)
    from ddetr.evaluation.coco_metric import format_classwise
    table = format_classwise(metric.classwise_results)
    assert table.splitlines()[0].split() == ['category', 'AP', 'AP50', 'AP75', 'GTs']
    assert f'{dropped}' in table and '0.0' in table and '100.0' in table
