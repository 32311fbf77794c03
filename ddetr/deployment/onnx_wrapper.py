"""The whole detector as one traceable module with MMDeploy's detection interface.

    input   (1, 3, H, W) float32, already normalized (the data preprocessor's mean/std,
            RGB) and padded; every pixel is taken as valid (no padding mask)
    dets    (1, N, 5) float32: x1, y1, x2, y2 in pixels of ``input``, score
    labels  (1, N) int64

Backbone, neck, encoder, decoder and head are the detector's own modules, called through
its pipeline steps with no data samples (so nothing is padding); only the head's
post-processing is restated here with tensor shapes instead of per-image metadata:
sigmoid, the top ``max_per_img`` of all (query, class) pairs, (cx, cy, w, h) -> (x1, y1,
x2, y2) scaled to the input size and clipped to it, as ``DeformableDETRHead.predict_by_feat``
does with ``img_shape`` = the input size and ``rescale=False``.
"""
from typing import Tuple

import torch
from torch import Tensor, nn

from ddetr.models.utils import box_cxcywh_to_xyxy


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

    def forward(self, input: Tensor) -> Tuple[Tensor, Tensor]:  # noqa: A002 (MMDeploy's name)
        if input.dim() != 4 or input.shape[0] != 1 or input.shape[1] != 3:
            raise ValueError(f'ONNXDetector: input must be (1, 3, H, W), got '
                             f'{tuple(input.shape)}')
        detector = self.detector
        head_inputs = detector.forward_transformer(input, None)
        # (num_layers, 1, nq, num_classes), (num_layers, 1, nq, 4) normalized (cx, cy, w, h)
        all_cls_scores, all_bbox_preds = detector.bbox_head(head_inputs['hidden_states'],
                                                            head_inputs['references'])
        cls_scores = all_cls_scores[-1, 0].float()  # (nq, num_classes)
        bbox_preds = all_bbox_preds[-1, 0].float()  # (nq, 4)
        # (nq, num_classes) -> (nq * num_classes,): query-major, as the head
        scores, indices = cls_scores.sigmoid().flatten().topk(self.max_per_img)
        labels = indices % self.num_classes
        boxes = box_cxcywh_to_xyxy(bbox_preds[indices // self.num_classes])  # (N, 4)
        height, width = input.shape[2], input.shape[3]
        # (4,) as (W, H, W, H): from the traced input shape, so --dynamic scales right
        size = torch.stack([torch.as_tensor(width), torch.as_tensor(height)]).to(boxes.dtype)
        size = size.repeat(2)
        boxes = torch.min(torch.clamp(boxes * size, min=0), size)
        dets = torch.cat([boxes, scores[:, None]], -1)[None]  # (1, N, 5)
        return dets, labels.to(torch.int64)[None]
