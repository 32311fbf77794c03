"""Sigmoid focal loss (Lin et al., 2017) for the classification branch."""
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ddetr.registry import MODELS


@MODELS.register_module()
class SigmoidFocalLoss(nn.Module):
    """loss_weight * sum over (query, class) of FL(p, y) / avg_factor, where y is the
    one-hot target of each query (all zeros for "no object") and
    FL = -alpha_t (1 - p_t)^gamma log(p_t).

    Args:
        alpha (float): weight of the positives (0.25).
        gamma (float): focusing exponent (2).
        loss_weight (float): multiplier (2 in Deformable DETR, Sec. 5).
    """

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0,
                 loss_weight: float = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.loss_weight = loss_weight

    def forward(self, logits: Tensor, labels: Tensor, avg_factor: float) -> Tensor:
        """
        Args:
            logits: (N, num_classes) classification logits.
            labels: (N,) int64 class of each row; ``num_classes`` means no object.
            avg_factor: the normalizer (number of boxes).
        """
        num_classes = logits.shape[-1]
        if labels.shape != logits.shape[:-1]:
            raise ValueError(f'SigmoidFocalLoss: labels of shape {tuple(labels.shape)} do not '
                             f'match logits of shape {tuple(logits.shape)}')
        # one column more for "no object", dropped: background rows become all zeros
        targets = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(logits.dtype)
        loss = sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma,
                                  reduction='sum')
        return self.loss_weight * loss / avg_factor

    def extra_repr(self) -> str:
        return f'alpha={self.alpha}, gamma={self.gamma}, loss_weight={self.loss_weight}'
