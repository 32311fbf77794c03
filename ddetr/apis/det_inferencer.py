"""One object for inference: a ddetr config and checkpoint in, detections (and pictures of
them) out, called as MMDetection 3.x's ``DetInferencer`` is.

    inferencer = DetInferencer(model='configs/ddetr_r50.py', weights='ddetr_r50.safetensors')
    result = inferencer('demo.jpg', pred_score_thr=0.5, out_dir='outputs')
    result['predictions'][0]  # {'labels': [...], 'scores': [...], 'bboxes': [[x1, y1, x2, y2]]}

MMDetection's own ``DetInferencer`` builds its model in the ``mmdet`` scope, where
``DeformableDETR`` is MMDetection's class: given a ddetr config it builds another model, or
none. This one builds ddetr's (:func:`ddetr.apis.init_detector`), so it returns exactly the
detections of ``init_detector`` + ``inference_detector``.

A batch runs images of one network-input size together. Images of different sizes are
not padded into one tensor: the transformer masks padding, but the backbone sees it at the
border of the smaller image, which moves its scores (by ~1e-3 on the quick-start model)
and can reorder its detections, so the result would depend on ``batch_size``. They run as
separate batches, and every image gets the detections it gets alone.
"""
import itertools
import os
import os.path as osp
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config

from ddetr.datasets.transforms.loading import load_image
from ddetr.errors import ConfigError, ImageLoadError

from .inference import as_rgb, build_test_pipeline, init_detector

__all__ = ['DetInferencer', 'IMAGE_EXTENSIONS']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')

InputType = Union[str, np.ndarray]
InputsType = Union[InputType, Sequence[InputType]]

_instances = itertools.count()  # each inferencer's visualizer has a name of its own


class DetInferencer:
    """ddetr's detector behind MMDetection 3.x ``DetInferencer``'s call.

    Args:
        model: a ddetr config file (or a loaded :class:`mmengine.Config`).
        weights: its checkpoint: ``.pth`` (mmengine format or a bare state dict, read
            safely, :mod:`ddetr.engine.checkpoint`) or ``.safetensors``. ``None`` or
            ``'none'``: the model's own random initialization drawn with ``seed`` (to try
            the pipeline).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``...; ``None``: the GPU when there is
            one.
        palette: box colours, as ``DetLocalVisualizer`` takes them (``'random'``,
            ``'coco'``, a list of RGB tuples...); ``None``: the checkpoint's dataset palette,
            else random.
        cfg_options: ``KEY=VALUE`` config overrides (as ``--cfg-options``).

    Class names come from the checkpoint's ``dataset_meta``, else from the config's
    dataset (:func:`ddetr.apis.inference.dataset_meta_of`); ``self.dataset_meta`` holds
    them. Mistakes raise :class:`ddetr.errors.DdetrError` naming the file or key.
    """

    def __init__(self, model: Union[str, Config], weights: Optional[str] = None,
                 device: Optional[str] = None, palette=None, *,
                 cfg_options: Optional[Sequence[str]] = None, seed: int = 0) -> None:
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        self.model = init_detector(model, weights, device, cfg_options, seed=seed)
        self.cfg = self.model.cfg
        self.pipeline = build_test_pipeline(self.cfg)
        self.dataset_meta = dict(self.model.dataset_meta)
        if palette is not None:
            self.dataset_meta['palette'] = palette
        self._visualizer = None
        self.num_arrays = 0  # arrays seen, which name their outputs: 00000000.jpg...

    # ------------------------------------------------------------------------- inputs
    @staticmethod
    def inputs_to_list(inputs: InputsType) -> List[InputType]:
        """An image file, an array, a folder (its image files, sorted, not recursive) or a
        list of these, as one flat list. A path that does not exist or a folder without
        images raises :class:`ImageLoadError`."""
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        flat = []
        for item in items:
            if isinstance(item, np.ndarray):
                flat.append(item)
            elif not isinstance(item, (str, os.PathLike)):
                raise ImageLoadError(f'an input must be an image file, a folder or a BGR '
                                     f'array (H, W, 3), not {type(item).__name__}')
            elif osp.isdir(item):
                names = sorted(n for n in os.listdir(item)
                               if n.lower().endswith(IMAGE_EXTENSIONS)
                               and osp.isfile(osp.join(item, n)))
                if not names:
                    raise ImageLoadError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in '
                                         f'folder {item}')
                flat += [osp.join(str(item), n) for n in names]
            elif not osp.exists(item):
                raise ImageLoadError(f'image file not found: {item}')
            else:
                flat.append(str(item))
        return flat

    @staticmethod
    def read_image(item: InputType) -> np.ndarray:
        """The BGR uint8 (H, W, 3) image of a file (errors name it) or an array (grey
        (H, W) arrays are repeated to three channels)."""
        if not isinstance(item, np.ndarray):
            return load_image(item)
        if item.ndim == 2:
            item = np.repeat(item[..., None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] != 3 or 0 in item.shape:
            raise ImageLoadError(f'an image array must be (H, W, 3) BGR, got shape '
                                 f'{tuple(item.shape)}')
        return item

    # ---------------------------------------------------------------------- the call
    def __call__(self, inputs: InputsType, batch_size: int = 1, return_vis: bool = False,
                 show: bool = False, wait_time: float = 0, no_save_vis: bool = False,
                 draw_pred: bool = True, pred_score_thr: float = 0.3,
                 return_datasamples: bool = False, print_result: bool = False,
                 no_save_pred: bool = True, out_dir: str = '',
                 skip_unreadable: bool = False) -> dict:
        """Detect on ``inputs`` (an image file, a folder, a BGR array or a list of these),
        ``batch_size`` images at a time.

        Returns ``dict(predictions=[...], visualization=[...])``, one entry per image in
        input order. A prediction is ``{'labels': [int], 'scores': [float], 'bboxes':
        [[x1, y1, x2, y2]]}`` in original-image pixels, every detection the model keeps
        (``test_cfg.max_per_img``), best first (``return_datasamples``: the
        ``DetDataSample`` instead). ``pred_score_thr`` is the least score drawn; the
        pictures (RGB arrays) are returned with ``return_vis`` (else ``visualization`` is
        ``None``); ``show`` displays each in a window (for ``wait_time`` seconds, 0: until
        a key is pressed), ``draw_pred=False`` leaves the boxes out.

        With ``out_dir``, the pictures are written to ``out_dir/vis/<image name>`` (unless
        ``no_save_vis``) and, when ``no_save_pred`` is False, the predictions to
        ``out_dir/preds/<image name without extension>.json``; arrays are named
        ``00000000.jpg`` / ``.json``, ``00000001``... . ``skip_unreadable``: an image that
        cannot be read is left out (it has no prediction) and listed under ``skipped`` as
        ``{'index': its place in the flat list of inputs (:meth:`inputs_to_list`), 'error':
        the message naming the file}`` instead of raising :class:`ImageLoadError`.
        """
        if batch_size < 1:
            raise ConfigError(f'batch_size must be at least 1, got {batch_size}')
        items = self.inputs_to_list(inputs)
        draw = return_vis or show or (bool(out_dir) and not no_save_vis)
        predictions, visualization, skipped = [], [], []
        for images, paths, names in self._batches(items, batch_size, skipped,
                                                  skip_unreadable):
            samples = self.predict(images, paths)
            if draw:
                visualization += self.visualize(
                    images, samples, names, show=show, wait_time=wait_time,
                    draw_pred=draw_pred, pred_score_thr=pred_score_thr,
                    out_dir='' if no_save_vis else out_dir)
            pred_dir = '' if no_save_pred else out_dir
            predictions += [sample if return_datasamples else self.pred2dict(sample, name,
                                                                              pred_dir)
                            for sample, name in zip(samples, names)]
        result = dict(predictions=predictions,
                      visualization=visualization if return_vis else None)
        if skip_unreadable:
            result['skipped'] = skipped
        if print_result:
            print(result)
        return result

    def _batches(self, items: List[InputType], batch_size: int, skipped: list,
                 skip_unreadable: bool) -> Iterator[Tuple[list, list, list]]:
        """(images, their files or None, output names) of ``batch_size`` readable images
        at a time."""
        images, paths, names = [], [], []
        for index, item in enumerate(items):
            try:
                image = self.read_image(item)
            except ImageLoadError as e:
                if not skip_unreadable:
                    raise
                skipped.append(dict(index=index, error=str(e)))
                continue
            images.append(image)
            paths.append(None if isinstance(item, np.ndarray) else item)
            names.append(self._name_of(item))
            if len(images) == batch_size:
                yield images, paths, names
                images, paths, names = [], [], []
        if images:
            yield images, paths, names

    def _name_of(self, item: InputType) -> str:
        if isinstance(item, np.ndarray):
            name = f'{self.num_arrays:08d}.jpg'
            self.num_arrays += 1
            return name
        return osp.basename(item)

    @torch.no_grad()
    def predict(self, images: List[np.ndarray],
                paths: Optional[List[Optional[str]]] = None) -> list:
        """DetDataSamples of decoded BGR images (read from ``paths``, if any), in order: the
        config's test pipeline, then the data preprocessor and the model, one batch per
        network-input size (see the module's docstring)."""
        paths = paths or [None] * len(images)
        packed = [self.pipeline(dict(img=image, img_id=img_id, img_path=path))
                  for img_id, (image, path) in enumerate(zip(images, paths))]
        by_size: Dict[tuple, List[int]] = {}
        for index, item in enumerate(packed):
            by_size.setdefault(tuple(item['inputs'].shape[-2:]), []).append(index)
        samples = [None] * len(packed)
        for indices in by_size.values():
            data = dict(inputs=[packed[i]['inputs'] for i in indices],
                        data_samples=[packed[i]['data_samples'] for i in indices])
            for index, sample in zip(indices, self.model.test_step(data)):
                samples[index] = sample
        return samples

    # ------------------------------------------------------------------------ outputs
    @property
    def visualizer(self):
        """mmdet's DetLocalVisualizer with this model's class names (and palette)."""
        if self._visualizer is None:
            from mmdet.visualization import DetLocalVisualizer
            self._visualizer = DetLocalVisualizer.get_instance(
                f'ddetr_inferencer_{next(_instances)}')
            self._visualizer.dataset_meta = self.dataset_meta
        return self._visualizer

    def visualize(self, images: List[np.ndarray], samples: list, names: List[str],
                  show: bool = False, wait_time: float = 0, draw_pred: bool = True,
                  pred_score_thr: float = 0.3, out_dir: str = '') -> List[np.ndarray]:
        """The detections with at least ``pred_score_thr`` drawn on each original image
        (RGB arrays); written to ``out_dir/vis/<name>`` when ``out_dir`` is given."""
        drawn = []
        for image, sample, name in zip(images, samples, names):
            out_file = osp.join(out_dir, 'vis', name) if out_dir else None
            if out_file:
                os.makedirs(osp.dirname(out_file), exist_ok=True)
            with warnings.catch_warnings():
                # boxes touching the border are drawn all the same; mmdet 3.3 np.clip()s a
                # tensor, which numpy 2 warns about
                warnings.filterwarnings('ignore', message='.*out of bounds')
                warnings.filterwarnings('ignore', message='__array_wrap__',
                                        category=DeprecationWarning)
                self.visualizer.add_datasample(
                    name, as_rgb(image), sample, draw_gt=False, draw_pred=draw_pred,
                    show=show, wait_time=wait_time, out_file=out_file,
                    pred_score_thr=pred_score_thr)
            drawn.append(self.visualizer.get_image())
        return drawn

    @staticmethod
    def pred2dict(sample, name: str = '', pred_dir: str = '') -> Dict[str, list]:
        """``{'labels', 'scores', 'bboxes'}`` of a DetDataSample as plain lists; written as
        JSON to ``pred_dir/preds/<name without extension>.json`` when ``pred_dir`` is
        given."""
        pred = sample.pred_instances.cpu()
        result = dict(labels=pred.labels.tolist(), scores=pred.scores.tolist(),
                      bboxes=pred.bboxes.tolist())
        if pred_dir:
            import json
            out_file = osp.join(pred_dir, 'preds', osp.splitext(name)[0] + '.json')
            os.makedirs(osp.dirname(out_file), exist_ok=True)
            with open(out_file, 'w') as f:
                json.dump(result, f)
        return result
