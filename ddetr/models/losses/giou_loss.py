"""Generalized IoU loss (Rezatofighi et al., 2019)."""
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from ddetr.registry import MODELS


@MODELS.register_module()
class GIoULoss(nn.Module):
    """loss_weight * sum (1 - GIoU(pred_i, target_i)) / avg_factor over matched pairs.

    Args:
        loss_weight (float): multiplier (2).
    """

    def __init__(self, *, loss_weight: float = 2.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, avg_factor: float) -> Tensor:
        """pred, target: (N, 4) boxes (x1, y1, x2, y2). An empty N gives 0."""
        if pred.shape != target.shape:
            raise ValueError(f'GIoULoss: pred {tuple(pred.shape)} and target '
                             f'{tuple(target.shape)} differ in shape')
        if pred.numel() == 0:
            return pred.sum() * 0
        loss = generalized_box_iou_loss(pred, target, reduction='sum')
        return self.loss_weight * loss / avg_factor

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}'
