"""L1 loss on normalized boxes."""
from torch import Tensor, nn

from ddetr.registry import MODELS


@MODELS.register_module()
class L1Loss(nn.Module):
    """loss_weight * sum |pred - target| / avg_factor, over matched boxes in normalized
    (cx, cy, w, h).

    Args:
        loss_weight (float): multiplier (5).
    """

    def __init__(self, *, loss_weight: float = 5.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, avg_factor: float) -> Tensor:
        """pred, target: (N, 4). An empty N gives 0 (still attached to the graph)."""
        if pred.shape != target.shape:
            raise ValueError(f'L1Loss: pred {tuple(pred.shape)} and target '
                             f'{tuple(target.shape)} differ in shape')
        return self.loss_weight * (pred - target).abs().sum() / avg_factor

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}'
