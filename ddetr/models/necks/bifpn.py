"""BiFPN (Tan et al., EfficientDet, CVPR 2020) on top of Deformable DETR's multi-scale
maps, for the "+ BiFPN" row of Table 2."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch import Tensor, nn

from ddetr.errors import ConfigError
from ddetr.registry import MODELS

from .channel_mapper import MultiScaleChannelMapper


def resize_to(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bring (bs, C, h, w) to ``size`` (H, W): 3x3 stride-2 max pooling when going one level
    coarser (it gives ceil(h / 2), like the stride-2 convolutions that made the maps),
    nearest upsampling when going finer, and nearest resizing for any other mismatch."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] > size[0] and x.shape[-1] > size[1]:
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        if tuple(x.shape[-2:]) == tuple(size):
            return x
    return F.interpolate(x, size=size, mode='nearest')


class WeightedFusion(nn.Module):
    """One BiFPN node: fast normalized fusion sum_i w_i x_i / (eps + sum_i w_i) with
    w_i = relu(learned scalar), then swish, a depthwise-separable 3x3 convolution and a
    normalization layer."""

    def __init__(self, num_inputs: int, channels: int, norm_cfg: dict, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weights = nn.Parameter(torch.ones(num_inputs))
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels,
                                   bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.norm = build_norm_layer(norm_cfg, channels)[1]

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        weights = F.relu(self.weights)
        weights = weights / (weights.sum() + self.eps)
        fused = sum(w * x for w, x in zip(weights, inputs))
        return self.norm(self.pointwise(self.depthwise(F.silu(fused))))


class BiFPNLayer(nn.Module):
    """One bidirectional pass over L maps P_0 (finest) .. P_{L-1} (coarsest):

    top-down   T_{L-1} = P_{L-1};  T_i = node(P_i, up(T_{i+1}))            i = L-2 .. 0
    bottom-up  O_0 = T_0;  O_i = node(P_i, T_i, down(O_{i-1}))              0 < i < L-1
               O_{L-1} = node(P_{L-1}, down(O_{L-2}))
    """

    def __init__(self, num_levels: int, channels: int, norm_cfg: dict, eps: float) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.top_down = nn.ModuleList(
            WeightedFusion(2, channels, norm_cfg, eps) for _ in range(num_levels - 1))
        self.bottom_up = nn.ModuleList(
            WeightedFusion(2 if i == num_levels - 1 else 3, channels, norm_cfg, eps)
            for i in range(1, num_levels))

    def forward(self, mlvl_feats: Sequence[Tensor]) -> List[Tensor]:
        num_levels = self.num_levels
        top_down: List[Tensor] = [None] * num_levels
        top_down[-1] = mlvl_feats[-1]
        for i in range(num_levels - 2, -1, -1):
            up = resize_to(top_down[i + 1], mlvl_feats[i].shape[-2:])
            top_down[i] = self.top_down[i]([mlvl_feats[i], up])
        outs = [top_down[0]]
        for i in range(1, num_levels):
            down = resize_to(outs[-1], mlvl_feats[i].shape[-2:])
            if i == num_levels - 1:
                inputs = [mlvl_feats[i], down]
            else:
                inputs = [mlvl_feats[i], top_down[i], down]
            outs.append(self.bottom_up[i - 1](inputs))
        return outs


@MODELS.register_module()
class BiFPN(BaseModule):
    """Deformable DETR's maps (MultiScaleChannelMapper: 1x1 conv + GN on C3-C5, 3x3 stride-2
    conv + GN for C6) followed by ``num_repeats`` BiFPN layers with fast normalized fusion,
    depthwise-separable convolutions and GroupNorm. The paper gives no BiFPN sizes; the
    default of 3 repeats is EfficientDet-D0's depth at Deformable DETR's width.

    Args:
        in_channels (list[int]): backbone channels, finest first.
        out_channels (int): C (256).
        num_outs (int): number of levels L (>= 2).
        num_repeats (int): number of BiFPN layers.
        norm_cfg (dict): normalization of every node (GroupNorm(32) by default).
        eps (float): of the fast normalized fusion.
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int = 256,
                 num_outs: int = 4, num_repeats: int = 3, norm_cfg: Optional[dict] = None,
                 eps: float = 1e-4, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_outs < 2:
            raise ConfigError(f'BiFPN needs at least 2 levels, got num_outs={num_outs}')
        norm_cfg = norm_cfg or dict(type='GN', num_groups=32)
        self.num_outs = num_outs
        self.input_proj = MultiScaleChannelMapper(in_channels=in_channels,
                                                  out_channels=out_channels,
                                                  num_outs=num_outs, norm_cfg=norm_cfg)
        self.layers = nn.ModuleList(
            BiFPNLayer(num_outs, out_channels, norm_cfg, eps) for _ in range(num_repeats))

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        mlvl_feats = list(self.input_proj(inputs))
        for layer in self.layers:
            mlvl_feats = layer(mlvl_feats)
        return tuple(mlvl_feats)
