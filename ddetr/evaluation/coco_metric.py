"""COCO's 12 bbox metrics under the names COCO gives them, and a per-class table."""
import contextlib
import io
import math
import os.path as osp
import tempfile
from typing import List, Optional

import numpy as np
from mmdet.datasets.api_wrappers import COCOeval
from mmdet.evaluation.metrics import CocoMetric
from mmengine.fileio import load
from mmengine.logging import MMLogger

from ddetr.errors import ConfigError
from ddetr.registry import METRICS

# mmdet's CocoMetric reads pycocotools' 12 stats by these names, which assume maxDets
# (100, 300, 1000); with COCO's own maxDets (1, 10, 100) the recall entries mean:
_AR_NAMES = {
    'AR@100': 'AR@1', 'AR@300': 'AR@10', 'AR@1000': 'AR@100',
    'AR_s@1000': 'AR_s@100', 'AR_m@1000': 'AR_m@100', 'AR_l@1000': 'AR_l@100',
}
_AP_NAMES = ['mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l']


@METRICS.register_module()
class Coco12Metric(CocoMetric):
    """mmdet's CocoMetric (pycocotools) returning all 12 standard bbox metrics: AP, AP50,
    AP75, APs, APm, APl as ``bbox_mAP*`` (mmdet's names) and AR with at most 1, 10, 100
    detections per image and ARs/ARm/ARl at 100 as ``bbox_AR@1`` ... ``bbox_AR_l@100``,
    exactly the table pycocotools prints.

    With ``classwise=True`` it also logs a per-class table (AP, AP50, AP75 and the number
    of ground-truth instances, crowds excluded) and keeps it in ``classwise_results`` (a
    list of dicts, one per class in the dataset's order; ``None`` for a class without
    ground truth), which ``tools/test.py --classwise`` writes to the metrics JSON.
    """

    def __init__(self, classwise: bool = False, **kwargs):
        for key in ('proposal_nums', 'metric_items'):
            if key in kwargs:
                raise ConfigError(f'Coco12Metric fixes {key}; use mmdet\'s CocoMetric to set it')
        super().__init__(proposal_nums=(1, 10, 100),
                         metric_items=_AP_NAMES + list(_AR_NAMES), classwise=False, **kwargs)
        self.per_class = classwise
        self.classwise_results: Optional[List[dict]] = None

    def compute_metrics(self, results):
        metrics = super().compute_metrics(results)
        renamed = {}
        for key, value in metrics.items():
            prefix, _, item = key.partition('_')
            renamed[f'{prefix}_{_AR_NAMES[item]}' if item in _AR_NAMES else key] = value
        if self.per_class and not self.format_only:
            self.classwise_results = self._classwise(results)
            MMLogger.get_current_instance().info(
                'per-class bbox results:\n' + format_classwise(self.classwise_results))
        return renamed

    def _classwise(self, results) -> List[dict]:
        """AP, AP50, AP75 and ground-truth count of every class, from pycocotools'
        precision array (IoU thresholds x recall x class x area x max detections)."""
        _, preds = zip(*results)
        with tempfile.TemporaryDirectory() as tmp:
            predictions = load(self.results2json(preds, osp.join(tmp, 'results'))['bbox'])
        precision = None
        if predictions:
            coco_eval = COCOeval(self._coco_api, self._coco_api.loadRes(predictions), 'bbox')
            coco_eval.params.catIds = self.cat_ids
            coco_eval.params.imgIds = self.img_ids
            coco_eval.params.maxDets = list(self.proposal_nums)
            coco_eval.params.iouThrs = self.iou_thrs
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco_eval.evaluate()
                coco_eval.accumulate()
            precision = coco_eval.eval['precision']
            iou_thrs = np.asarray(coco_eval.params.iouThrs)
        rows = []
        for k, cat_id in enumerate(self.cat_ids):
            anns = self._coco_api.loadAnns(
                self._coco_api.getAnnIds(imgIds=self.img_ids, catIds=[cat_id]))
            num_gts = sum(1 for a in anns if not a.get('iscrowd', 0))
            row = dict(category=self._coco_api.loadCats(cat_id)[0]['name'], num_gts=num_gts)
            for name, thr in (('AP', None), ('AP50', 0.5), ('AP75', 0.75)):
                if precision is None:  # no detection at all
                    row[name] = 0.0 if num_gts else None
                    continue
                p = precision[:, :, k, 0, -1]  # all areas, 100 detections
                if thr is not None:
                    p = p[np.isclose(iou_thrs, thr)]
                p = p[p > -1]
                row[name] = float(p.mean()) if p.size else None
            rows.append(row)
        return rows


def format_classwise(rows: List[dict]) -> str:
    """The per-class table as aligned text (the metrics are x100, as pycocotools' AP)."""
    def ap(value):
        return '-' if value is None or math.isnan(value) else f'{100 * value:.1f}'
    width = max([len('category')] + [len(r['category']) for r in rows])
    lines = [f'{"category":<{width}}  {"AP":>5}  {"AP50":>5}  {"AP75":>5}  {"GTs":>7}']
    for r in rows:
        lines.append(f'{r["category"]:<{width}}  {ap(r["AP"]):>5}  {ap(r["AP50"]):>5}  '
                     f'{ap(r["AP75"]):>5}  {r["num_gts"]:>7}')
    return '\n'.join(lines)
