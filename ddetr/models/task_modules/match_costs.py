"""Pairwise matching costs between predictions and ground truth, each a (num_queries,
num_gts) matrix already multiplied by its weight. Boxes are normalized (cx, cy, w, h)."""
from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou

from ddetr.registry import TASK_UTILS

from ..utils import box_cxcywh_to_xyxy


class MatchCost:
    """Base: ``weight`` times the cost of ``_cost``.

    Every cost is called with the same keyword arguments:
    pred_logits (nq, num_classes), pred_boxes (nq, 4), gt_labels (ng,) int64, gt_boxes (ng, 4).
    """

    def __init__(self, *, weight: float = 1.0) -> None:
        self.weight = weight

    def __call__(self, *, pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor,
                 gt_boxes: Tensor) -> Tensor:
        return self.weight * self._cost(pred_logits, pred_boxes, gt_labels, gt_boxes)

    def _cost(self, pred_logits, pred_boxes, gt_labels, gt_boxes) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'{type(self).__name__}(weight={self.weight})'


@TASK_UTILS.register_module()
class FocalLossCost(MatchCost):
    """Classification cost of the focal loss: for query q and object j of class c,
    FL(p_qc, positive) - FL(p_qc, negative), the change of the focal loss of class c when q
    is matched to j instead of being "no object".

    Args:
        alpha, gamma (float): of the focal loss (0.25, 2).
        eps (float): inside the logs.
        weight (float): multiplier (2).
    """

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, eps: float = 1e-8,
                 weight: float = 2.0) -> None:
        super().__init__(weight=weight)
        self.alpha = alpha
        self.gamma = gamma
        self.eps = eps

    def _cost(self, pred_logits, pred_boxes, gt_labels, gt_boxes) -> Tensor:
        prob = pred_logits.sigmoid()[:, gt_labels]  # (nq, ng)
        neg = (1 - self.alpha) * prob ** self.gamma * -(1 - prob + self.eps).log()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + self.eps).log()
        return pos - neg


@TASK_UTILS.register_module()
class BBoxL1Cost(MatchCost):
    """L1 distance between normalized (cx, cy, w, h) boxes. ``weight`` default 5."""

    def __init__(self, *, weight: float = 5.0) -> None:
        super().__init__(weight=weight)

    def _cost(self, pred_logits, pred_boxes, gt_labels, gt_boxes) -> Tensor:
        return torch.cdist(pred_boxes, gt_boxes, p=1)


@TASK_UTILS.register_module()
class GIoUCost(MatchCost):
    """Negative generalized IoU. ``weight`` default 2."""

    def __init__(self, *, weight: float = 2.0) -> None:
        super().__init__(weight=weight)

    def _cost(self, pred_logits, pred_boxes, gt_labels, gt_boxes) -> Tensor:
        return -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes),
                                    box_cxcywh_to_xyxy(gt_boxes))


def build_match_cost(cfg: Optional[dict]) -> MatchCost:
    """A cost from a config dict (or an already built cost)."""
    if isinstance(cfg, MatchCost):
        return cfg
    return TASK_UTILS.build(cfg)
