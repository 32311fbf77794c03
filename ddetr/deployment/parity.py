"""An exported model against ddetr in PyTorch on the same padded batch: the batch, both
sides' detections, and their largest differences.

Detections are ``(dets (N, 5) x1, y1, x2, y2, score; labels (N,))`` numpy arrays per
image, boxes in pixels of the network input (no rescale to the original image).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddetr.errors import ConfigError

__all__ = ['pad_batch', 'pytorch_detections', 'onnx_detections', 'compare']

Detections = Tuple[np.ndarray, np.ndarray]


def pad_batch(images: Sequence[Tensor], shape: Optional[Tuple[int, int]] = None,
              pad_value: float = 0.0) -> Tuple[Tensor, List[Tuple[int, int]]]:
    """Prepared images ((3, h, w) or (1, 3, h, w) each) -> ((bs, 3, H, W) padded bottom/
    right with ``pad_value``, as DetDataPreprocessor pads, and each image's (h, w)).
    (H, W) is ``shape``, or the largest image's size."""
    images = [img[0] if img.dim() == 4 else img for img in images]
    sizes = [tuple(img.shape[-2:]) for img in images]
    if shape is None:
        shape = max(h for h, _ in sizes), max(w for _, w in sizes)
    for h, w in sizes:
        if h > shape[0] or w > shape[1]:
            raise ConfigError(f'a prepared image is {h}x{w}, larger than the input '
                              f'{shape[0]}x{shape[1]}: export with a larger --shape, or '
                              f'with --dynamic')
    batch = torch.stack([F.pad(img, (0, shape[1] - img.shape[-1], 0, shape[0] - img.shape[-2]),
                               value=pad_value) for img in images])
    return batch, sizes


def pytorch_detections(model: nn.Module, inputs: Tensor,
                       img_shapes: Optional[Sequence[Tuple[int, int]]] = None
                       ) -> List[Detections]:
    """ddetr's own ``predict`` (rescale=False) on the padded batch ``inputs`` (bs, 3, H, W)
    whose images are ``img_shapes`` (default: all of the input): per image, in pixels of
    the input."""
    from mmdet.structures import DetDataSample
    height, width = inputs.shape[-2:]
    img_shapes = img_shapes or [(height, width)] * len(inputs)
    samples = [DetDataSample(metainfo=dict(
        img_shape=tuple(hw), ori_shape=tuple(hw), pad_shape=(height, width),
        batch_input_shape=(height, width), scale_factor=(1.0, 1.0))) for hw in img_shapes]
    with torch.no_grad():
        preds = model.predict(inputs, samples, rescale=False)
    results = []
    for pred in preds:
        pred = pred.pred_instances
        dets = torch.cat([pred.bboxes, pred.scores[:, None]], -1)
        results.append((dets.numpy(), pred.labels.numpy()))
    return results


def onnx_detections(session, inputs: Tensor,
                    img_shapes: Optional[Sequence[Tuple[int, int]]] = None
                    ) -> List[Detections]:
    """The exported model in onnxruntime on the same batch: ``img_shapes`` is fed to a
    dynamic model's ``img_shape`` input; a static model (``input`` only) takes every pixel
    as image, so it is refused a batch with padding."""
    height, width = inputs.shape[-2:]
    img_shapes = [tuple(hw) for hw in (img_shapes or [(height, width)] * len(inputs))]
    feed = dict(input=inputs.numpy())
    if 'img_shape' in [i.name for i in session.get_inputs()]:
        feed['img_shape'] = np.asarray(img_shapes, dtype=np.int64).reshape(-1, 2)
    elif any(hw != (height, width) for hw in img_shapes):
        raise ConfigError(f'a static export has no img_shape input: it cannot run a padded '
                          f'batch ({img_shapes} in {height}x{width}); export with --dynamic')
    dets, labels = session.run(['dets', 'labels'], feed)
    return list(zip(dets, labels))


def compare(ref: Detections, got: Detections, score_tol: float = 1e-4) -> Dict[str, float]:
    """Largest differences between two images' detections.

    Scores come sorted from the top-k, so they are compared rank by rank. Each detection
    is then matched to the reference detection with the same label, a score within
    ``score_tol`` and the closest box: (query, class) pairs with equal scores may come out
    of the top-k in either order (saturated sigmoids) without being a difference.
    ``label_mismatches`` counts detections without such a partner."""
    (ref_dets, ref_labels), (dets, labels) = ref, got
    if dets.shape != ref_dets.shape or labels.shape != ref_labels.shape:
        raise ValueError(f'detections of shapes {dets.shape} and {labels.shape} against '
                         f'{ref_dets.shape} and {ref_labels.shape}')
    score = float(np.abs(dets[:, 4] - ref_dets[:, 4]).max()) if len(dets) else 0.0
    # (N, N): candidate partners, and the largest coordinate difference to each
    partner = ((labels[:, None] == ref_labels[None]) &
               (np.abs(dets[:, None, 4] - ref_dets[None, :, 4]) <= score_tol))
    box_diff = np.abs(dets[:, None, :4] - ref_dets[None, :, :4]).max(-1)
    box_diff = np.where(partner, box_diff, np.inf).min(1)  # (N,)
    matched = np.isfinite(box_diff)
    return dict(box_px=float(box_diff[matched].max()) if matched.any() else 0.0,
                score=score, label_mismatches=int((~matched).sum()))
