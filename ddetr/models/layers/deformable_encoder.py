"""The deformable Transformer encoder (Sec. 4.1): every pixel of every level is a query
whose reference point is the pixel itself; keys are the pixels of all levels."""
from typing import Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from ddetr.registry import MODELS

from ..fast_paths import Dropout
from ..utils import geometry_dtype, level_shapes
from .multi_scale_deformable_attention import MultiScaleDeformableAttention
from .transformer_layer import DeformableDetrTransformerLayerBase


@MODELS.register_module()
class DeformableDetrTransformerEncoderLayer(DeformableDetrTransformerLayerBase):
    """Post-norm encoder layer: x = norm1(x + MSDeformAttn(x + pos, ...)), then
    x = norm2(x + FFN(x)), with dropout after the attention and inside/after the FFN.

    Args:
        embed_dims (int): C.
        num_heads (int): M of the deformable attention.
        num_levels (int): L.
        num_points (int): K.
        multi_scale (bool): multi-scale attention on/off (see MultiScaleDeformableAttention).
        feedforward_channels (int): hidden channels of the FFN.
        dropout (float): dropout probability.
        with_cp (bool): activation checkpointing (see DeformableDetrTransformerLayerBase).
    """

    def __init__(self, *, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, multi_scale: bool = True,
                 feedforward_channels: int = 1024, dropout: float = 0.1,
                 with_cp: bool = False, init_cfg=None) -> None:
        super().__init__(with_cp=with_cp, init_cfg=init_cfg)
        self.embed_dims = embed_dims
        self.self_attn = MultiScaleDeformableAttention(
            embed_dims=embed_dims, num_heads=num_heads, num_levels=num_levels,
            num_points=num_points, multi_scale=multi_scale)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.build_ffn(embed_dims=embed_dims, feedforward_channels=feedforward_channels,
                       dropout=dropout)
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(self, *, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                key_padding_mask: Optional[Tensor] = None,
                query_levels: Optional[Tensor] = None) -> Tensor:
        """query, query_pos: (bs, num_keys, C); reference_points: (bs, num_keys, L, 2);
        the rest as in MultiScaleDeformableAttention. Returns (bs, num_keys, C)."""
        return self.run(self._forward, query=query, query_pos=query_pos,
                        reference_points=reference_points, spatial_shapes=spatial_shapes,
                        level_start_index=level_start_index,
                        key_padding_mask=key_padding_mask, query_levels=query_levels)

    def _forward(self, *, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                 spatial_shapes: Tensor, level_start_index: Tensor,
                 key_padding_mask: Optional[Tensor], query_levels: Optional[Tensor]) -> Tensor:
        attn = self.self_attn(query=query + query_pos, reference_points=reference_points,
                              value=query, spatial_shapes=spatial_shapes,
                              level_start_index=level_start_index,
                              key_padding_mask=key_padding_mask, query_levels=query_levels)
        query = self.norm1(query + self.dropout1(attn))
        return self.forward_ffn(query, self.norm2)


@MODELS.register_module()
class DeformableDetrTransformerEncoder(BaseModule):
    """A stack of ``num_layers`` encoder layers sharing one set of reference points.

    Parameters are shared among levels (Sec. 5: one attention module for all levels; the
    level embedding tells them apart).

    Args:
        num_layers (int): number of layers (6).
        layer_cfg (dict): keyword arguments of DeformableDetrTransformerEncoderLayer.
    """

    def __init__(self, *, num_layers: int = 6, layer_cfg: Optional[dict] = None,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        layer_cfg = dict(layer_cfg or {})
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            DeformableDetrTransformerEncoderLayer(**layer_cfg) for _ in range(num_layers))
        self.embed_dims = self.layers[0].embed_dims if num_layers else layer_cfg.get(
            'embed_dims', 256)

    def forward(self, *, query: Tensor, query_pos: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, valid_ratios: Tensor,
                key_padding_mask: Optional[Tensor] = None,
                mlvl_shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Tensor:
        """
        Args:
            query: (bs, num_keys, C) flattened maps of all levels.
            query_pos: (bs, num_keys, C) positional + level embeddings.
            spatial_shapes: (L, 2) int64 (H, W).
            level_start_index: (L,) int64.
            valid_ratios: (bs, L, 2) unpadded fraction (w, h) of each level's map.
            key_padding_mask: (bs, num_keys) bool, True on padded pixels.
            mlvl_shapes: the same (H, W) as Python ints (the detector has them from the
                maps' shapes); without them ``spatial_shapes`` is read back from the
                device once.

        Returns:
            memory (bs, num_keys, C)
        """
        mlvl_shapes = level_shapes(spatial_shapes if mlvl_shapes is None else mlvl_shapes)
        # float32 whatever the features' dtype (geometry; see MultiScaleDeformableAttention)
        reference_points = self.get_reference_points(mlvl_shapes, valid_ratios)
        # level of every query pixel, for multi-scale attention off: (num_keys,)
        query_levels = torch.cat([
            torch.full((height * width,), level, dtype=torch.int64, device=query.device)
            for level, (height, width) in enumerate(mlvl_shapes)])
        for layer in self.layers:
            query = layer(query=query, query_pos=query_pos, reference_points=reference_points,
                          spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                          key_padding_mask=key_padding_mask, query_levels=query_levels)
        return query

    @staticmethod
    def get_reference_points(spatial_shapes: Union[Tensor, Sequence[Tuple[int, int]]],
                             valid_ratios: Tensor) -> Tensor:
        """Each pixel's own centre as its reference point, on every level.

        The centre (j + 0.5, i + 0.5) of pixel (i, j) of level l is normalized by the
        level's *valid* size (W_l * r_w, H_l * r_h), i.e. relative to the unpadded image,
        then mapped onto each level's padded map by multiplying with that level's valid
        ratios. For unpadded images this is just ((j + 0.5) / W_l, (i + 0.5) / H_l).

        Args:
            spatial_shapes: (L, 2) int64 (H, W), or L (H, W) Python ints.
            valid_ratios: (bs, L, 2) (r_w, r_h).

        Returns:
            (bs, num_keys, L, 2) normalized (x, y), float32 (float64 for float64 ratios).
        """
        dtype = geometry_dtype(valid_ratios.dtype)
        valid_ratios = valid_ratios.to(dtype)
        mlvl_points = []
        for level, (height, width) in enumerate(level_shapes(spatial_shapes)):
            ys = torch.arange(height, dtype=dtype, device=valid_ratios.device) + 0.5
            xs = torch.arange(width, dtype=dtype, device=valid_ratios.device) + 0.5
            ref_y, ref_x = torch.meshgrid(ys, xs, indexing='ij')  # (H, W) each
            # (1, H*W) / (bs, 1) -> (bs, H*W)
            ref_y = ref_y.reshape(1, -1) / (valid_ratios[:, level, 1:2] * height)
            ref_x = ref_x.reshape(1, -1) / (valid_ratios[:, level, 0:1] * width)
            mlvl_points.append(torch.stack([ref_x, ref_y], -1))  # (bs, H*W, 2)
        points = torch.cat(mlvl_points, 1)  # (bs, num_keys, 2)
        # (bs, num_keys, 1, 2) * (bs, 1, L, 2) -> (bs, num_keys, L, 2)
        return points[:, :, None] * valid_ratios[:, None]
