from .coco_metric import Coco12Metric

__all__ = ['Coco12Metric']
