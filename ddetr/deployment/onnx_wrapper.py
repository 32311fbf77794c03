"""The whole detector as one traceable module, for ``torch.onnx.export``.

Two interfaces, one module:

- ``forward(input)`` (MMDeploy's detection interface, the static export)::

    input   (bs, 3, H, W) float32, normalized (the data preprocessor's mean/std, RGB);
            every pixel is taken as valid (no padding mask)

- ``forward(input, img_shape)`` (the ``--dynamic`` export: any batch size, height, width)::

    input      (bs, 3, H, W) float32, normalized, a padded batch (each image at the
               top-left, padded bottom/right, as DetDataPreprocessor pads)
    img_shape  (bs, 2) int64: each image's valid (height, width) inside the batch, what
               ddetr's PyTorch forward reads from each data sample's ``img_shape``

and both return::

    dets    (bs, N, 5) float32: x1, y1, x2, y2 in pixels of the input, clipped to the
            image's valid region, then the score; N = the head's ``max_per_img``
    labels  (bs, N) int64

Backbone, neck, encoder, decoder and head are the detector's own, run by
``DeformableDETR.forward_transformer`` with the padding mask built from the ``img_shape``
tensor instead of per-sample metadata, so that it stays a graph input; only the head's
post-processing is restated with batched tensors:
sigmoid, the top ``max_per_img`` of all (query, class) pairs of each image,
(cx, cy, w, h) -> (x1, y1, x2, y2) scaled to the image's valid size and clipped to it, as
``DeformableDETRHead.predict_by_feat`` does with ``rescale=False``.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ddetr.models.utils import box_cxcywh_to_xyxy


def padding_masks(img_shape: Tensor, height, width) -> Tensor:
    """(bs, 2) valid (h, w) per image -> (bs, H, W) bool, True on padded pixels: the mask
    ``DeformableDETR.padding_masks`` builds from the data samples, as tensor ops (``height``
    and ``width`` may be the traced sizes of an export)."""
    device = img_shape.device
    rows = torch.arange(height, device=device)  # (H,)
    cols = torch.arange(width, device=device)  # (W,)
    # (1, H, 1) >= (bs, 1, 1) | (1, 1, W) >= (bs, 1, 1) -> (bs, H, W)
    return ((rows[None, :, None] >= img_shape[:, 0, None, None])
            | (cols[None, None, :] >= img_shape[:, 1, None, None]))


class ONNXDetector(nn.Module):
    """Wraps a DeformableDETR in eval mode for ``torch.onnx.export``.

    Args:
        detector: a built ``DeformableDETR`` (weights loaded).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        head = detector.bbox_head
        self.num_classes = head.num_classes
        self.max_per_img = min(head.test_cfg['max_per_img'],
                               detector.num_queries * head.num_classes)

    def forward(self, input: Tensor,  # noqa: A002 (MMDeploy's name)
                img_shape: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if input.dim() != 4 or input.shape[1] != 3:
            raise ValueError(f'ONNXDetector: input must be (bs, 3, H, W), got '
                             f'{tuple(input.shape)}')
        bs, _, height, width = input.shape
        if img_shape is None:  # every pixel valid: the input's own size for each image
            size = torch.stack([torch.as_tensor(height), torch.as_tensor(width)])
            img_shape = size.to(torch.int64)[None].expand(bs, 2)
            masks = None  # the detector's own: nothing is padding, attention masks skipped
        else:
            self.check_img_shape(img_shape, input)
            masks = padding_masks(img_shape, height, width)
        head_inputs = self.detector.forward_transformer(input, masks=masks)
        # (num_layers, bs, nq, num_classes), (num_layers, bs, nq, 4) normalized (cx, cy, w, h)
        all_cls_scores, all_bbox_preds = self.detector.bbox_head(head_inputs['hidden_states'],
                                                                 head_inputs['references'])
        return self.predict_by_feat(all_cls_scores[-1], all_bbox_preds[-1], img_shape)

    @staticmethod
    def check_img_shape(img_shape: Tensor, input: Tensor) -> None:  # noqa: A002
        """(bs, 2) integers, each inside the input; the values are read in eager mode only
        (an export traces no value checks)."""
        bs, _, height, width = input.shape
        if img_shape.dim() != 2 or img_shape.shape[1] != 2 or img_shape.shape[0] != bs:
            raise ValueError(f'ONNXDetector: img_shape must be ({bs}, 2) for an input of '
                             f'{tuple(input.shape)}, got {tuple(img_shape.shape)}')
        if img_shape.is_floating_point():
            raise ValueError(f'ONNXDetector: img_shape must hold integers, got {img_shape.dtype}')
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        low, high = img_shape.min(0).values.tolist(), img_shape.max(0).values.tolist()
        if min(low) < 1 or high[0] > height or high[1] > width:
            raise ValueError(f'ONNXDetector: img_shape {img_shape.tolist()} must lie in '
                             f'[1, ({height}, {width})], the input\'s size')

    def predict_by_feat(self, cls_scores: Tensor, bbox_preds: Tensor,
                        img_shape: Tensor) -> Tuple[Tensor, Tensor]:
        """The last decoder layer's (bs, nq, num_classes) scores and (bs, nq, 4) normalized
        (cx, cy, w, h) boxes -> dets (bs, N, 5), labels (bs, N); ``img_shape`` (bs, 2)."""
        cls_scores, bbox_preds = cls_scores.float(), bbox_preds.float()
        # (bs, nq, num_classes) -> (bs, nq * num_classes): query-major, as the head
        scores, indices = cls_scores.sigmoid().flatten(1).topk(self.max_per_img, dim=1)
        labels = indices % self.num_classes  # (bs, N)
        queries = indices // self.num_classes  # (bs, N)
        # (bs, nq, 4) -> (bs, N, 4)
        boxes = bbox_preds.gather(1, queries[..., None].expand(-1, -1, 4))
        boxes = box_cxcywh_to_xyxy(boxes)
        img_h, img_w = img_shape.to(boxes.dtype).unbind(-1)  # (bs,) each
        size = torch.stack([img_w, img_h, img_w, img_h], -1)[:, None]  # (bs, 1, 4)
        boxes = torch.min((boxes * size).clamp(min=0), size)
        dets = torch.cat([boxes, scores[..., None]], -1)  # (bs, N, 5)
        return dets, labels.to(torch.int64)
