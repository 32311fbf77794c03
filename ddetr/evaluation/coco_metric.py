"""COCO's 12 bbox metrics under the names COCO gives them."""
from mmdet.evaluation.metrics import CocoMetric

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
    exactly the table pycocotools prints."""

    def __init__(self, **kwargs):
        for key in ('proposal_nums', 'metric_items'):
            if key in kwargs:
                raise ValueError(f'Coco12Metric fixes {key}; use mmdet\'s CocoMetric to set it')
        super().__init__(proposal_nums=(1, 10, 100),
                         metric_items=_AP_NAMES + list(_AR_NAMES), **kwargs)

    def compute_metrics(self, results):
        metrics = super().compute_metrics(results)
        renamed = {}
        for key, value in metrics.items():
            prefix, _, item = key.partition('_')
            renamed[f'{prefix}_{_AR_NAMES[item]}' if item in _AR_NAMES else key] = value
        return renamed
