"""Your own COCO-format data from a few top-level config names.

mmengine's inheritance merges a child's dicts into the parent's, but a child's top-level
``data_root = ...`` does not reach the parent's ``train_dataloader.dataset.data_root``
(the parent's value was substituted when the parent was read). So a user's config names
the data at the top level and :func:`apply_custom_data` (called by
:func:`ddetr.config.load_config`, the one way every tool reads a config) writes them where
they belong:

=====================  ====================================================================
top-level name         written to
=====================  ====================================================================
``data_root``          ``{train,val,test}_dataloader.dataset.data_root``; evaluators'
                       ``ann_file`` are joined to it
``classes``            ``{train,val,test}_dataloader.dataset.metainfo.classes``, and
                       ``model.bbox_head.num_classes = len(classes)``
                       (``metainfo = dict(classes=...)`` is accepted instead, mmdet style)
``train_ann_file``     ``train_dataloader.dataset.ann_file`` (relative to ``data_root``)
``train_img_dir``      ``train_dataloader.dataset.data_prefix.img`` (relative to it)
``val_ann_file``       ``val_dataloader.dataset.ann_file`` and ``val_evaluator.ann_file``
``val_img_dir``        ``val_dataloader.dataset.data_prefix.img``
``test_ann_file``      ``test_dataloader.dataset.ann_file`` and ``test_evaluator.ann_file``
``test_img_dir``       (both optional: without them the test split is the val split)
``dataset_type``       every split's dataset ``type`` (default ``SafeCocoDataset``)
=====================  ====================================================================

The step runs only when the config sets ``classes`` (or ``metainfo``) or one of the
``*_ann_file`` / ``*_img_dir`` names; configs without them are returned unchanged.
An ``*_ann_file`` without its ``*_img_dir`` (or the reverse), files without class
names, class names that are not a non-empty list of distinct strings, ``classes`` and
``metainfo.classes`` that differ, and look-alike names (``train_img_prefix``,
``val_ann``...) raise a :class:`ddetr.errors.ConfigError` naming the key.
"""
import os.path as osp

from ddetr.errors import ConfigError

SPLITS = ('train', 'val', 'test')
DATA_NAMES = tuple(f'{split}_{kind}' for split in SPLITS for kind in ('ann_file', 'img_dir'))


def _config_name(cfg) -> str:
    return getattr(cfg, 'filename', None) or 'config'


def _check_names(cfg, name: str) -> None:
    """Look-alikes of the documented names are a typo, not something to ignore."""
    for key in cfg.keys():
        for split in SPLITS:
            if key.startswith((f'{split}_ann', f'{split}_img', f'{split}_image',
                               f'{split}_data_prefix')) and key not in DATA_NAMES:
                raise ConfigError(
                    f'{name}: unknown top-level name `{key}`; the data names are '
                    f'{", ".join(DATA_NAMES)} (see ddetr/config/custom_data.py)')


def _classes(cfg, name: str):
    classes = cfg.get('classes', None)
    metainfo = cfg.get('metainfo', None)
    meta_classes = metainfo.get('classes') if isinstance(metainfo, dict) else None
    if classes is not None and meta_classes is not None and \
            list(classes) != list(meta_classes):
        raise ConfigError(f'{name}: `classes` {list(classes)} and `metainfo.classes` '
                          f'{list(meta_classes)} differ; set one of them')
    classes = classes if classes is not None else meta_classes
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or \
            len(classes) == 0:
        raise ConfigError(f'{name}: `classes` must be a non-empty list or tuple of class '
                          f'names, e.g. classes = (\'car\', \'person\'); got {classes!r}')
    duplicates = sorted({c for c in classes if list(classes).count(c) > 1})
    if duplicates:
        raise ConfigError(f'{name}: `classes` names {duplicates} more than once')
    return tuple(classes)


def innermost_dataset(dataset):
    """The dataset itself under wrappers (RepeatDataset, ClassBalancedDataset...)."""
    while isinstance(dataset.get('dataset', None), dict):
        dataset = dataset['dataset']
    return dataset


def _evaluators(evaluator):
    if isinstance(evaluator, dict):
        return [evaluator]
    return [e for e in (evaluator or []) if isinstance(e, dict)]


def apply_custom_data(cfg):
    """Fill the dataloaders, evaluators and head of ``cfg`` (an mmengine Config, edited in
    place and returned) from the top-level data names described in this module."""
    name = _config_name(cfg)
    _check_names(cfg, name)
    classes = _classes(cfg, name)
    given = [key for key in DATA_NAMES if cfg.get(key, None) is not None]
    if classes is None and not given:
        return cfg
    if classes is None:
        raise ConfigError(f'{name}: {", ".join(given)} set but no class names: add '
                          f'classes = (...) with the names of the annotation file\'s '
                          f'categories')
    for split in SPLITS:
        ann, img = f'{split}_ann_file', f'{split}_img_dir'
        if (cfg.get(ann, None) is None) != (cfg.get(img, None) is None):
            missing = img if cfg.get(img, None) is None else ann
            raise ConfigError(f'{name}: `{ann}` and `{img}` go together; `{missing}` is '
                              f'missing')
    data_root = cfg.get('data_root', None) or ''
    dataset_type = cfg.get('dataset_type', None) or 'SafeCocoDataset'
    for split in SPLITS:
        loader_key = f'{split}_dataloader'
        if cfg.get(loader_key, None) is None:
            continue
        # the test split is the val split unless test_* names are given
        source = split if split != 'test' or cfg.get('test_ann_file', None) else 'val'
        ann_file = cfg.get(f'{source}_ann_file', None)
        dataset = innermost_dataset(cfg[loader_key]['dataset'])
        if ann_file is not None:
            if dataset.get('type') != dataset_type:
                dataset.pop('synthetic', None)  # SyntheticShapesDataset's generator only
            dataset['type'] = dataset_type
            dataset['data_root'] = data_root
            dataset['ann_file'] = ann_file
            dataset['data_prefix'] = dict(img=cfg.get(f'{source}_img_dir'))
        metainfo = dict(dataset.get('metainfo', None) or {})
        metainfo['classes'] = classes
        if isinstance(cfg.get('metainfo', None), dict) and 'palette' in cfg.metainfo:
            metainfo['palette'] = cfg.metainfo['palette']
        dataset['metainfo'] = metainfo
        if split != 'train' and ann_file is not None:
            for evaluator in _evaluators(cfg.get(f'{split}_evaluator', None)):
                evaluator['ann_file'] = ann_file if osp.isabs(ann_file) else \
                    osp.join(data_root, ann_file)
    if 'num_classes' in cfg:
        cfg.num_classes = len(classes)
    if cfg.get('model', {}).get('bbox_head', None) is not None:
        cfg.model.bbox_head.num_classes = len(classes)
    return cfg
