"""ddetr's registries: children of MMDetection's, so configs (``default_scope='ddetr'``)
find ddetr's own modules first and everything else (ResNet, CocoDataset, transforms,
CocoMetric, hooks...) in mmdet and mmengine."""
from mmdet.registry import DATASETS as MMDET_DATASETS
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmdet.registry import METRICS as MMDET_METRICS
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.registry import TASK_UTILS as MMDET_TASK_UTILS
from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
from mmdet.registry import VISUALIZERS as MMDET_VISUALIZERS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMDET_MODELS, scope='ddetr', locations=['ddetr.models'])
TASK_UTILS = Registry('task util', parent=MMDET_TASK_UTILS, scope='ddetr',
                      locations=['ddetr.models.task_modules'])
DATASETS = Registry('dataset', parent=MMDET_DATASETS, scope='ddetr',
                    locations=['ddetr.datasets'])
TRANSFORMS = Registry('transform', parent=MMDET_TRANSFORMS, scope='ddetr',
                      locations=['ddetr.datasets.transforms'])
METRICS = Registry('metric', parent=MMDET_METRICS, scope='ddetr', locations=['ddetr.evaluation'])
HOOKS = Registry('hook', parent=MMDET_HOOKS, scope='ddetr', locations=['ddetr.engine.hooks'])
VISUALIZERS = Registry('visualizer', parent=MMDET_VISUALIZERS, scope='ddetr',
                       locations=['ddetr.visualization'])
