"""Fixed sine positional encodings: of feature-map pixels (as in DETR, normalized over
the unpadded region) and of the two-stage proposals' boxes."""
import math

import torch
from mmengine.model import BaseModule
from torch import Tensor

from ddetr.errors import ConfigError
from ddetr.registry import MODELS


def sine_embed(coords: Tensor, num_feats: int, temperature: float) -> Tensor:
    """(..., D) coordinates (already scaled, e.g. to [0, 2*pi]) -> (..., D * num_feats):
    each coordinate c becomes [sin(c / T^(0/F)), cos(c / T^(0/F)), sin(c / T^(2/F)),
    cos(c / T^(2/F)), ...] with F = num_feats, T = temperature."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode='floor') / num_feats)
    pos = coords[..., None] / dim_t  # (..., D, F)
    # interleave sin of even and cos of odd frequencies: (..., D, F / 2, 2) -> (..., D * F)
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1)
    return pos.flatten(-3)


@MODELS.register_module()
class SinePositionalEncoding(BaseModule):
    """Positional encoding of feature-map pixels, from the padding mask.

    The 1-based row and column counters of the unpadded pixels are shifted by ``offset``
    and divided by the last counter (+ ``eps``), so the image spans (0, 1] whatever its
    size, then scaled by ``scale`` (2*pi); each axis gets ``num_feats`` sine/cosine features
    (temperature 10000), concatenated as (y, x): 2 * num_feats = embed_dims channels.

    Args:
        num_feats (int): features per axis (128 for embed_dims 256).
        temperature (float): base of the frequencies.
        normalize (bool): divide by the image extent (the paper's setting) or not.
        scale (float): multiplier after normalizing.
        offset (float): added to the counters before normalizing (-0.5: pixel centres).
        eps (float): keeps the division finite.
    """

    def __init__(self, *, num_feats: int = 128, temperature: float = 10000,
                 normalize: bool = True, scale: float = 2 * math.pi, offset: float = -0.5,
                 eps: float = 1e-6, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_feats % 2 != 0:
            raise ConfigError(f'SinePositionalEncoding: num_feats must be even, got {num_feats}')
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset
        self.eps = eps

    def forward(self, mask: Tensor) -> Tensor:
        """mask: (bs, H, W) bool, True on padded pixels -> (bs, 2 * num_feats, H, W) float32."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (bs, H, W) row counter
        x_embed = not_mask.cumsum(2, dtype=torch.float32)  # (bs, H, W) column counter
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        # (bs, H, W, 2) -> (bs, H, W, 2 * num_feats) -> (bs, 2 * num_feats, H, W)
        pos = sine_embed(torch.stack([y_embed, x_embed], dim=-1), self.num_feats,
                         self.temperature)
        return pos.permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return (f'num_feats={self.num_feats}, temperature={self.temperature}, '
                f'normalize={self.normalize}, scale={self.scale:.4f}, offset={self.offset}')
