"""Check, before the first training iteration, what would otherwise fail late: the head's
classes against the dataset's, the class names against the annotation files, and one
validation image through the val pipeline, the model's predict and the metric."""
import json
import os.path as osp

import torch
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ddetr.errors import ImageLoadError, PreflightError
from ddetr.registry import HOOKS


def _innermost(dataset):
    """The dataset under wrappers (RepeatDataset, ConcatDataset's first...)."""
    while hasattr(dataset, 'dataset'):
        dataset = dataset.dataset
    if hasattr(dataset, 'datasets'):
        return _innermost(dataset.datasets[0])
    return dataset


def check_categories(ann_file: str, classes, key: str) -> None:
    """Every class name is a category of ``ann_file`` and every category with boxes is a
    class; otherwise PreflightError listing the names (``key``: the dataset's config key)."""
    with open(ann_file) as f:
        coco = json.load(f)
    names = {c['id']: c['name'] for c in coco.get('categories', [])}
    used = {a['category_id'] for a in coco.get('annotations', [])}
    unknown = [c for c in classes if c not in names.values()]
    missing = sorted({names[i] for i in used if i in names} - set(classes))
    problems = []
    if unknown:
        problems.append(f'class names {unknown} are not categories of the file')
    if missing:
        problems.append(f'its categories {missing} have boxes but are not in the class '
                        f'names (their boxes would be dropped)')
    if problems:
        raise PreflightError(
            f'{key}: {"; ".join(problems)}. {ann_file} declares '
            f'{sorted(names.values())}; set `classes` (or {key}.metainfo.classes) to the '
            f'names to train')


@HOOKS.register_module()
class PreflightHook(Hook):
    """Runs once in ``before_train``:

    * ``model.bbox_head.num_classes`` against the training dataset's classes: fewer is a
      PreflightError naming both, more a warning (the extra outputs never see a box);
    * the class names of each split against its annotation file's categories
      (:func:`check_categories`);
    * the first image of the val (and, when configured differently, test) dataset through
      its pipeline, ``model.test_step`` (data preprocessor + predict, with ``rescale``) and
      the evaluator's metrics, so a pipeline or metric mistake stops the run in seconds
      with the config key to change instead of at the end of training.

    Args:
        check_pipeline (bool): run the one-image val/test check (default True).
    """
    priority = 'VERY_LOW'

    def __init__(self, check_pipeline: bool = True):
        self.check_pipeline = check_pipeline

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        train_set = _innermost(runner.train_dataloader.dataset)
        classes = tuple(train_set.metainfo.get('classes', ()))
        head = getattr(model, 'bbox_head', None)
        num_classes = getattr(head, 'num_classes', None)
        if num_classes is not None and classes:
            if num_classes < len(classes):
                raise PreflightError(
                    f'model.bbox_head.num_classes = {num_classes} but the training dataset '
                    f'(train_dataloader.dataset) has {len(classes)} classes {list(classes)}; '
                    f'set num_classes = {len(classes)} (or `classes` at the top level of the '
                    f'config, which sets it)')
            if num_classes > len(classes):
                runner.logger.warning(
                    f'model.bbox_head.num_classes = {num_classes} is more than the '
                    f'{len(classes)} classes of train_dataloader.dataset {list(classes)}; '
                    f'the extra class outputs are trained as background only')
        self._check_dataset_categories(train_set, 'train_dataloader.dataset')
        if not self.check_pipeline:
            return
        loops = [('val', runner.val_loop)] if runner.val_loop is not None else []
        for split, loop in loops:
            self._check_one_image(runner, loop.dataloader.dataset, loop.evaluator, split)
        test_cfg = runner.cfg.get('test_dataloader', None)
        if test_cfg is not None and test_cfg != runner.cfg.get('val_dataloader', None) \
                and runner.cfg.get('test_evaluator', None) is not None:
            from ddetr.registry import DATASETS
            test_set = DATASETS.build(test_cfg['dataset'])
            evaluator = runner.build_evaluator(runner.cfg.test_evaluator)
            evaluator.dataset_meta = getattr(test_set, 'metainfo', None)
            self._check_one_image(runner, test_set, evaluator, 'test')
        runner.logger.info('pre-flight: classes, annotation categories and one validation '
                           'image through pipeline, predict and metric: OK')

    @staticmethod
    def _check_dataset_categories(dataset, key: str) -> None:
        dataset = _innermost(dataset)
        ann_file = getattr(dataset, 'ann_file', None)
        classes = dataset.metainfo.get('classes', None)
        if ann_file and classes and osp.isfile(ann_file) and ann_file.endswith('.json'):
            check_categories(ann_file, classes, key)

    def _check_one_image(self, runner, dataset, evaluator, split: str) -> None:
        key = f'{split}_dataloader.dataset'
        self._check_dataset_categories(dataset, key)
        if len(dataset) == 0:
            raise PreflightError(f'{key}: the {split} dataset is empty '
                                 f'({getattr(_innermost(dataset), "ann_file", "")})')
        sample = None
        for idx in range(min(len(dataset), 8)):  # the first readable image
            try:
                sample = dataset[idx]
                break
            except ImageLoadError as e:  # a data problem the test run reports by name
                runner.logger.warning(f'pre-flight: {key}: skipped image {idx}: {e}')
            except Exception as e:
                raise PreflightError(
                    f'{key}.pipeline: the first {split} image does not go through the '
                    f'pipeline: {type(e).__name__}: {e}') from e
        if sample is None:
            runner.logger.warning(f'pre-flight: {key}: no readable image among the first '
                                  f'8; the {split} pipeline is not checked')
            return
        data = pseudo_collate([sample])
        was_training = runner.model.training
        runner.model.eval()
        try:
            with torch.no_grad():
                outputs = runner.model.test_step(data)
        except Exception as e:
            raise PreflightError(
                f'{key}.pipeline / model: the first {split} image went through the pipeline '
                f'but not through the model\'s predict (check the PackDetInputs meta_keys '
                f'of {key}.pipeline): {type(e).__name__}: {e}') from e
        finally:
            runner.model.train(was_training)
        metrics = getattr(evaluator, 'metrics', [])
        try:
            evaluator.process(data_samples=outputs, data_batch=data)  # to dicts, per metric
        except Exception as e:
            for metric in metrics:
                metric.results.clear()
            raise PreflightError(
                f'{split}_evaluator: the metric fails on the first {split} image\'s '
                f'prediction: {type(e).__name__}: {e}') from e
        for metric in metrics:
            try:
                metric.compute_metrics(list(metric.results))
            except Exception as e:
                raise PreflightError(
                    f'{split}_evaluator ({type(metric).__name__}): the metric fails on the '
                    f'first {split} image\'s prediction: {type(e).__name__}: {e}') from e
            finally:
                metric.results.clear()
