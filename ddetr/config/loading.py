"""The front door: a config file and a command line become the config of a run.

Every tool and API reads configs through :func:`load_config`, so a config means the same
thing to training, testing, the sweep, the demo, the benchmarks and the export:

1. the file is read with mmengine (inheritance through ``_base_``);
2. ``--cfg-options KEY=VALUE`` are merged, with one rule for top-level names
   (:func:`merge_cfg_options`): a name the run reads (``load_from``, ``train_cfg``...)
   is set; ``data_root`` moves every dataloader and evaluator that read the old root; a
   variable the file only used while it was read (``max_iters``, ``num_classes``...) is
   refused, naming the keys its value went into, because setting it would change nothing;
3. the top-level data names of your own dataset are written into the dataloaders,
   evaluators and head (:mod:`ddetr.config.custom_data`);
4. what the caller asks for: ``work_dir``, ``launcher``, a number of classes, no
   pretrained download.

Mistakes raise :class:`ddetr.errors.ConfigError` naming the file and key.
"""
import copy
import difflib
import inspect
import os.path as osp
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

from mmengine.config import Config, DictAction

from ddetr.errors import ConfigError

from .custom_data import DATA_NAMES, SPLITS, apply_custom_data, innermost_dataset

__all__ = ['load_config', 'merge_cfg_options', 'parse_cfg_options', 'RUN_KEYS']


def _runner_keys() -> frozenset:
    from mmengine.runner import Runner
    names = inspect.signature(Runner.__init__).parameters
    return frozenset(name for name in names if name != 'self')


#: Top-level names read when a run starts: mmengine Runner's arguments and what its
#: ``from_cfg`` and ddetr's tools read besides (TTA, the sweep's row label, the inference
#: API's test pipeline, the custom-data names of :mod:`ddetr.config.custom_data`).
RUN_KEYS = _runner_keys() | frozenset({
    'model_wrapper_cfg', 'find_unused_parameters', 'compile', 'tta_model', 'tta_pipeline',
    'test_pipeline', 'sweep_row', 'data_root', 'classes', 'metainfo', 'dataset_type',
    *DATA_NAMES})


def parse_cfg_options(options: Sequence[str]) -> dict:
    """``--cfg-options`` KEY=VALUE strings -> dict for ``Config.merge_from_dict``, with
    mmengine's value parsing (numbers, lists, tuples, True/False/None)."""
    parsed = {}
    for option in options:
        if '=' not in option:
            raise ConfigError(f'--cfg-options: "{option}" is not KEY=VALUE')
        key, value = option.split('=', maxsplit=1)
        parsed[key] = DictAction._parse_iterable(value)
    return parsed


def _walk(node: Any, path: str = '') -> Iterator[Tuple[str, Any]]:
    """(dotted path, value) of every entry under ``node``, lists indexed by position."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        child = f'{path}.{key}' if path else str(key)
        yield child, value
        yield from _walk(value, child)


def _places_of(cfg: Config, name: str, value: Any, limit: int = 4) -> List[str]:
    """The keys a run reads where the file wrote ``value`` of its variable ``name``
    (equal, or a string that starts with it, as ``data_root + 'annotations/...'``)."""
    places = []
    for key, _ in cfg.items():
        if key not in RUN_KEYS:  # another variable: as ineffective to set
            continue
        for path, entry in _walk({key: cfg[key]}):
            if entry is value or (type(entry) is type(value) and entry == value) or (
                    isinstance(value, str) and value and isinstance(entry, str)
                    and entry.startswith(value)):
                places.append(path)
                if len(places) == limit:
                    return places
    return places


def _move_data_root(cfg: Config, old: Optional[str], new: str) -> List[str]:
    """Point every dataset and evaluator that read the data root ``old`` at ``new``;
    returns the keys changed."""
    moved, seen = [], set()
    for split in SPLITS:
        loader = cfg.get(f'{split}_dataloader', None)
        if isinstance(loader, dict) and isinstance(loader.get('dataset'), dict):
            dataset = innermost_dataset(loader['dataset'])
            if id(dataset) not in seen and old is not None and dataset.get('data_root') == old:
                seen.add(id(dataset))
                dataset['data_root'] = new
                moved.append(f'{split}_dataloader.dataset.data_root')
        evaluators = cfg.get(f'{split}_evaluator', None)
        for evaluator in [evaluators] if isinstance(evaluators, dict) else evaluators or []:
            ann_file = evaluator.get('ann_file') if isinstance(evaluator, dict) else None
            if (id(evaluator) in seen or not old or not isinstance(ann_file, str)
                    or not ann_file.startswith(old)):
                continue
            seen.add(id(evaluator))
            evaluator['ann_file'] = osp.join(new, ann_file[len(old):].lstrip('/'))
            moved.append(f'{split}_evaluator.ann_file')
    return moved


def merge_cfg_options(cfg: Config, options: Union[Sequence[str], dict]) -> Config:
    """Merge ``--cfg-options`` into ``cfg`` (in place) with the top-level rule of this
    module's docstring; dotted keys merge as in mmengine."""
    if not isinstance(options, dict):
        options = parse_cfg_options(options)
    name = getattr(cfg, 'filename', None) or 'the config'
    old_root = cfg.get('data_root', None)
    for key, value in options.items():
        if '.' in key or key in RUN_KEYS:
            continue
        if key in cfg:
            places = _places_of(cfg, key, cfg[key])
            where = (f'its value {cfg[key]!r} is already in {", ".join(places)}'
                     if places else f'what it computed from {cfg[key]!r} is already set')
            raise ConfigError(
                f'--cfg-options {key}={value!r}: `{key}` is a variable of {name}, used only '
                f'while the file is read ({where}), so setting it would change nothing; '
                f'override the keys built from it instead'
                + (f', e.g. --cfg-options {places[0]}=...' if places else ''))
        close = difflib.get_close_matches(key, sorted(set(cfg.keys()) | RUN_KEYS), n=1)
        raise ConfigError(f'--cfg-options {key}={value!r}: {name} has no top-level key `{key}` '
                          f'and no run reads one' +
                          (f' (did you mean `{close[0]}`?)' if close else ''))
    cfg.merge_from_dict(options)
    if 'data_root' in options:
        moved = _move_data_root(cfg, old_root, options['data_root'])
        custom = any(cfg.get(key, None) is not None for key in DATA_NAMES)
        if not moved and not custom:
            raise ConfigError(
                f'--cfg-options data_root={options["data_root"]!r}: no dataloader or evaluator '
                f'of {name} reads its data_root ({old_root!r}); set '
                f'train_dataloader.dataset.data_root (and the val/test ones) instead')
    return cfg


def load_config(config: Union[str, Config], cfg_options: Optional[Sequence[str]] = None, *,
                work_dir: Optional[str] = None, launcher: Optional[str] = None,
                num_classes: Optional[int] = None, no_downloads: bool = False) -> Config:
    """The config of a run: ``config`` (a file, or a Config that is copied) with
    ``cfg_options`` merged and the custom-data names applied.

    Args:
        work_dir: set ``cfg.work_dir`` (default: the config's, else
            ``work_dirs/<config name>``); only for runs (train, test), when given or
            when ``launcher`` is.
        launcher: ``cfg.launcher`` of a run (``'none'``, ``'pytorch'``...).
        num_classes: the head's number of classes (the inference APIs' override).
        no_downloads: drop the backbone's pretrained init (weights come from a checkpoint).
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        source = getattr(cfg, 'filename', None) or 'config'
    else:
        if not osp.isfile(config):
            raise ConfigError(f'config {config} does not exist')
        cfg = Config.fromfile(config)
        source = config
    if cfg_options:
        merge_cfg_options(cfg, cfg_options)
    apply_custom_data(cfg)
    if 'model' not in cfg:
        raise ConfigError(f'config {source} has no `model`')
    if num_classes is not None:
        cfg.model.bbox_head.num_classes = num_classes
    if no_downloads and cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    if launcher is not None or work_dir is not None:
        cfg.launcher = launcher or 'none'
        cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join(
            'work_dirs', osp.splitext(osp.basename(source))[0])
    return cfg
