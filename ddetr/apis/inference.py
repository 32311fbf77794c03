"""Single-image inference for the tools (demo, sampling-point visualization, complexity):
build a detector from a config without downloading anything, load a checkpoint with
errors that name the file, and run the config's test pipeline on one image."""
import copy
import os.path as osp
from typing import Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config
from torch import nn

from ddetr.config import config_errors_named, load_config
from ddetr.datasets.transforms.loading import load_image
from ddetr.engine.checkpoint import load_checkpoint_file
from ddetr.engine.state_dict import load_for_testing, state_dict_of
from ddetr.errors import CheckpointError, ConfigError
from ddetr.registry import DATASETS, MODELS
from ddetr.setup_env import register_all_modules


def build_detector(cfg: Config) -> nn.Module:
    """The config's model from ddetr's registry (mmdet's modules as fallback). A misspelt
    or missing config key raises :class:`ddetr.errors.ConfigError` naming it."""
    register_all_modules()
    with config_errors_named():
        return MODELS.build(cfg.model)


def load_weights(model: nn.Module, checkpoint: str) -> dict:
    """Load an mmengine checkpoint (or a bare state dict) into ``model`` strictly, with
    safe unpickling (:func:`ddetr.engine.load_checkpoint_file`). Returns the checkpoint's
    ``meta`` (empty when it has none)."""
    if not osp.isfile(checkpoint):
        raise CheckpointError(f'checkpoint {checkpoint} does not exist')
    ckpt = load_checkpoint_file(checkpoint, map_location='cpu')  # CheckpointError: named
    load_for_testing(model, state_dict_of(ckpt, checkpoint), checkpoint)
    meta = ckpt.get('meta') if isinstance(ckpt.get('meta'), dict) else {}
    return meta


def dataset_meta_of(cfg: Config, checkpoint_meta: Optional[dict] = None) -> dict:
    """Class names (and palette) for drawing: the checkpoint's ``dataset_meta``, else the
    config's test dataset class ``METAINFO``, else ``class_<i>``."""
    meta = (checkpoint_meta or {}).get('dataset_meta')
    if meta and meta.get('classes'):
        return dict(meta)
    num_classes = cfg.model.bbox_head.num_classes
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    dataset_cls = DATASETS.get(dataset.get('type')) if dataset.get('type') else None
    metainfo = dict(getattr(dataset_cls, 'METAINFO', None) or {})
    metainfo.update(dataset.get('metainfo') or {})
    classes = metainfo.get('classes')
    if classes and len(classes) == num_classes:
        return dict(classes=tuple(classes), palette=metainfo.get('palette'))
    return dict(classes=tuple(f'class_{i}' for i in range(num_classes)))


def init_weights_quietly(model: nn.Module) -> None:
    """``model.init_weights()`` without mmengine's per-parameter log."""
    import logging

    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def init_detector(config: Union[str, Config], checkpoint: Optional[str] = None,
                  device: str = 'cpu', cfg_options: Optional[Sequence[str]] = None,
                  num_classes: Optional[int] = None, seed: int = 0) -> nn.Module:
    """Build the config's detector in eval mode with ``checkpoint`` loaded; without one
    (``None`` or ``'none'``) the weights are the model's own random initialization, drawn
    with ``seed``. ``model.cfg`` is the config used and ``model.dataset_meta`` the class
    names."""
    cfg = load_config(config, cfg_options, num_classes=num_classes, no_downloads=True)
    random_init = checkpoint is None or checkpoint.lower() == 'none'
    if random_init:
        torch.manual_seed(seed)
    model = build_detector(cfg)
    meta = {}
    if random_init:
        init_weights_quietly(model)
    else:
        model.cfg = cfg  # named in a checkpoint error
        meta = load_weights(model, checkpoint)
    model.cfg = cfg
    model.dataset_meta = dataset_meta_of(cfg, meta)
    return model.to(device).eval()


def build_test_pipeline(cfg: Config):
    """The config's test pipeline for an image already in memory: its loading step
    becomes mmdet's ``LoadImageFromNDArray`` and annotation loading is dropped."""
    from mmengine.dataset import Compose
    pipeline = cfg.get('test_pipeline') or cfg.get('test_dataloader', {}).get(
        'dataset', {}).get('pipeline')
    if not pipeline:
        raise ConfigError(f'config {cfg.filename} has no test pipeline (test_pipeline or '
                       f'test_dataloader.dataset.pipeline)')
    steps = []
    for step in copy.deepcopy(list(pipeline)):
        kind = str(step.get('type', ''))
        if kind.startswith('LoadImageFrom'):
            step = dict(type='mmdet.LoadImageFromNDArray')
        elif kind.startswith('LoadAnnotations'):
            continue
        steps.append(step)
    return Compose(steps)


def prepare_image(model: nn.Module, image: Union[str, np.ndarray], pipeline=None) -> dict:
    """Read ``image`` (a file: an error names it if it is missing or corrupt; or a decoded
    BGR uint8 array), run the test pipeline and the model's data preprocessor: returns
    ``dict(inputs=(1, 3, H, W), data_samples=[DetDataSample])`` ready for
    ``model(..., mode=...)``, and the decoded BGR image under ``img``."""
    if isinstance(image, np.ndarray):
        img, path = image, None
    else:
        img, path = load_image(image), image
    pipeline = pipeline or build_test_pipeline(model.cfg)
    data = pipeline(dict(img=img, img_id=0, img_path=path))
    batch = dict(inputs=[data['inputs']], data_samples=[data['data_samples']])
    device = next(model.parameters()).device
    with torch.no_grad():
        batch = model.data_preprocessor(batch, False)
    batch['inputs'] = batch['inputs'].to(device)
    batch['img'] = img
    return batch


def inference_detector(model: nn.Module, image: Union[str, np.ndarray], pipeline=None):
    """Detections on one image (a file or a decoded BGR array, see ``prepare_image``): a
    DetDataSample whose ``pred_instances`` hold ``bboxes`` (x1, y1, x2, y2 in
    original-image pixels), ``scores`` and ``labels``."""
    batch = prepare_image(model, image, pipeline)
    with torch.no_grad():
        return model(batch['inputs'], batch['data_samples'], mode='predict')[0]


def as_rgb(img_bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img_bgr[..., ::-1])
