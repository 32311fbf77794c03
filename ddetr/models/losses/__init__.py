"""Losses of the set prediction (Hungarian) loss: focal, L1 and GIoU."""
from .focal_loss import SigmoidFocalLoss
from .giou_loss import GIoULoss
from .l1_loss import L1Loss

__all__ = ['SigmoidFocalLoss', 'L1Loss', 'GIoULoss']
