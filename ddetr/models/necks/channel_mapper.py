"""The multi-scale feature maps of Deformable DETR (Sec. 4.1, A.2, Fig. 4)."""
from typing import List, Optional, Sequence, Tuple

from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import Tensor, nn

from ddetr.errors import ConfigError
from ddetr.registry import MODELS


@MODELS.register_module()
class MultiScaleChannelMapper(BaseModule):
    """Maps backbone stages to ``num_outs`` maps of ``out_channels`` without any top-down
    path (A.2): a 1x1 convolution + GroupNorm(32) on each of C3-C5, and for each further
    level a 3x3 stride-2 convolution + GroupNorm, the first on C5 itself, the next ones on
    the previous extra map (C6 = conv(C5) for the default 4 levels).

    The convolutions have biases, as in the original release (its parameter count includes
    them; MMDetection's ChannelMapper has none, and its weights load with zero biases).

    With ``num_outs`` smaller than the number of inputs only the coarsest ``num_outs``
    inputs are mapped: ``num_outs=1`` is the single-scale model of Table 2 (C5 alone, as
    the original release does with one feature level).

    Args:
        in_channels (list[int]): channels of the backbone outputs, finest first.
        out_channels (int): C (256).
        num_outs (int): number of output levels L.
        norm_cfg (dict): normalization after every convolution.
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int = 256,
                 num_outs: int = 4, norm_cfg: Optional[dict] = None,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_outs < 1:
            raise ConfigError(f'MultiScaleChannelMapper: num_outs must be >= 1, got {num_outs}')
        norm_cfg = norm_cfg or dict(type='GN', num_groups=32)
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        # the inputs that are mapped: all of them, or the coarsest num_outs
        self.start_level = max(len(self.in_channels) - num_outs, 0)
        self.convs = nn.ModuleList(
            ConvModule(c, out_channels, 1, bias=True, norm_cfg=norm_cfg, act_cfg=None)
            for c in self.in_channels[self.start_level:])
        self.extra_convs = nn.ModuleList()
        for i in range(num_outs - len(self.convs)):
            c = self.in_channels[-1] if i == 0 else out_channels
            self.extra_convs.append(
                ConvModule(c, out_channels, 3, stride=2, padding=1, bias=True,
                           norm_cfg=norm_cfg, act_cfg=None))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convolutions xavier-uniform with zero bias, norms weight 1 / bias 0 (as the
        original release's input projections)."""
        for module in list(self.convs) + list(self.extra_convs):
            nn.init.xavier_uniform_(module.conv.weight, gain=1)
            nn.init.zeros_(module.conv.bias)
            if module.with_norm:
                nn.init.ones_(module.norm.weight)
                nn.init.zeros_(module.norm.bias)

    def init_weights(self) -> None:
        if self.init_cfg:
            super().init_weights()
        else:
            self.reset_parameters()

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """inputs: the backbone's maps (bs, in_channels[i], H_i, W_i), finest first.
        Returns ``num_outs`` maps (bs, out_channels, H_l, W_l), finest first."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'MultiScaleChannelMapper expects {len(self.in_channels)} inputs '
                             f'(in_channels={self.in_channels}), got {len(inputs)}')
        mlvl_feats: List[Tensor] = [
            conv(x) for conv, x in zip(self.convs, inputs[self.start_level:])]
        for i, conv in enumerate(self.extra_convs):
            mlvl_feats.append(conv(inputs[-1] if i == 0 else mlvl_feats[-1]))
        return tuple(mlvl_feats)
