"""Necks producing Deformable DETR's multi-scale maps: the paper's channel mapper (A.2)
and, for Table 2, BiFPN (mmdet's FPN is used as is for the FPN row)."""
from .bifpn import BiFPN
from .channel_mapper import MultiScaleChannelMapper

__all__ = ['MultiScaleChannelMapper', 'BiFPN']
