"""ddetr's registries: one child of each of MMDetection's, so configs with
``default_scope='ddetr'`` find ddetr's own modules first and everything else (ResNet,
CocoDataset, transforms, CocoMetric, samplers, hooks, loops...) in mmdet and mmengine."""
from mmdet import registry as mmdet_registry
from mmengine.registry import Registry


def _child(name: str, parent: Registry, locations=None) -> Registry:
    return Registry(name, parent=parent, scope='ddetr', locations=locations or [])


RUNNERS = _child('runner', mmdet_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _child('runner constructor', mmdet_registry.RUNNER_CONSTRUCTORS)
LOOPS = _child('loop', mmdet_registry.LOOPS)
HOOKS = _child('hook', mmdet_registry.HOOKS, ['ddetr.engine.hooks'])
DATASETS = _child('dataset', mmdet_registry.DATASETS, ['ddetr.datasets'])
DATA_SAMPLERS = _child('data sampler', mmdet_registry.DATA_SAMPLERS)
TRANSFORMS = _child('transform', mmdet_registry.TRANSFORMS, ['ddetr.datasets.transforms'])
MODELS = _child('model', mmdet_registry.MODELS, ['ddetr.models'])
MODEL_WRAPPERS = _child('model_wrapper', mmdet_registry.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child('weight initializer', mmdet_registry.WEIGHT_INITIALIZERS)
OPTIMIZERS = _child('optimizer', mmdet_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _child('optim_wrapper', mmdet_registry.OPTIM_WRAPPERS, ['ddetr.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    mmdet_registry.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child('parameter scheduler', mmdet_registry.PARAM_SCHEDULERS)
METRICS = _child('metric', mmdet_registry.METRICS, ['ddetr.evaluation'])
EVALUATOR = _child('evaluator', mmdet_registry.EVALUATOR)
TASK_UTILS = _child('task util', mmdet_registry.TASK_UTILS, ['ddetr.models.task_modules'])
VISUALIZERS = _child('visualizer', mmdet_registry.VISUALIZERS)
VISBACKENDS = _child('vis_backend', mmdet_registry.VISBACKENDS)
LOG_PROCESSORS = _child('log_processor', mmdet_registry.LOG_PROCESSORS)
