"""The deformable Transformer decoder (Sec. 4.1): object queries attend to each other with
ordinary multi-head self-attention and to the encoder's maps with multi-scale deformable
cross-attention around their reference points; optionally each layer refines the boxes
(iterative bounding box refinement, Sec. 4.2 / A.4)."""
from typing import Optional, Tuple

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from ddetr.errors import ConfigError
from ddetr.registry import MODELS

from ..fast_paths import Dropout
from ..utils import offset_boxes
from .multi_scale_deformable_attention import MultiScaleDeformableAttention
from .transformer_layer import DeformableDetrTransformerLayerBase


@MODELS.register_module()
class DeformableDetrTransformerDecoderLayer(DeformableDetrTransformerLayerBase):
    """Post-norm decoder layer, in this order:
    self-attention -> norm1, deformable cross-attention -> norm2, FFN -> norm3
    (each with dropout and a residual connection). The positional query embedding is added
    to the queries and keys of the self-attention and to the query of the cross-attention.

    Args:
        embed_dims (int): C.
        num_heads (int): heads of both attentions.
        num_levels (int): L of the cross-attention.
        num_points (int): K of the cross-attention.
        multi_scale (bool): multi-scale cross-attention on/off.
        feedforward_channels (int): hidden channels of the FFN.
        dropout (float): dropout probability (also on the self-attention weights).
        with_cp (bool): activation checkpointing (see DeformableDetrTransformerLayerBase).
    """

    def __init__(self, *, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, multi_scale: bool = True,
                 feedforward_channels: int = 1024, dropout: float = 0.1,
                 with_cp: bool = False, init_cfg=None) -> None:
        super().__init__(with_cp=with_cp, init_cfg=init_cfg)
        self.embed_dims = embed_dims
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout,
                                               batch_first=True)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.cross_attn = MultiScaleDeformableAttention(
            embed_dims=embed_dims, num_heads=num_heads, num_levels=num_levels,
            num_points=num_points, multi_scale=multi_scale)
        self.dropout2 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.build_ffn(embed_dims=embed_dims, feedforward_channels=feedforward_channels,
                       dropout=dropout)
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(self, *, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                memory: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                memory_mask: Optional[Tensor] = None) -> Tensor:
        """query, query_pos: (bs, num_queries, C); reference_points: (bs, num_queries, L, 2|4);
        memory: (bs, num_keys, C); memory_mask: (bs, num_keys). Returns (bs, num_queries, C)."""
        return self.run(self._forward, query=query, query_pos=query_pos,
                        reference_points=reference_points, memory=memory,
                        spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                        memory_mask=memory_mask)

    def _forward(self, *, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                 memory: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                 memory_mask: Optional[Tensor]) -> Tensor:
        q = k = query + query_pos
        attn = self.self_attn(q, k, query, need_weights=False)[0]
        query = self.norm1(query + self.dropout1(attn))
        attn = self.cross_attn(query=query + query_pos, reference_points=reference_points,
                               value=memory, spatial_shapes=spatial_shapes,
                               level_start_index=level_start_index,
                               key_padding_mask=memory_mask)
        query = self.norm2(query + self.dropout2(attn))
        return self.forward_ffn(query, self.norm3)


@MODELS.register_module()
class DeformableDetrTransformerDecoder(BaseModule):
    """A stack of decoder layers returning every layer's output (for the auxiliary losses)
    and the reference of every layer.

    Reference points are normalized relative to the unpadded image; each layer maps them
    onto every level's padded map with the valid ratios. Without refinement they stay the
    initial ones. With refinement (``reg_branches`` given), after layer d the box
    b^d = sigma(delta^d + sigma^-1(b^(d-1))) (A.4) becomes the reference of layer d + 1,
    with the gradient blocked (detached); a 2-d initial point refines only (x, y) and
    takes (w, h) from delta alone, so b^0 = (p_x, p_y, sigma(bias_wh)).

    Args:
        num_layers (int): number of layers (6).
        layer_cfg (dict): keyword arguments of DeformableDetrTransformerDecoderLayer.
    """

    def __init__(self, *, num_layers: int = 6, layer_cfg: Optional[dict] = None,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        layer_cfg = dict(layer_cfg or {})
        if num_layers < 1:
            raise ConfigError(f'DeformableDetrTransformerDecoder: num_layers must be >= 1, '
                              f'got {num_layers}')
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            DeformableDetrTransformerDecoderLayer(**layer_cfg) for _ in range(num_layers))
        self.embed_dims = self.layers[0].embed_dims

    def forward(self, *, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                memory: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                valid_ratios: Tensor, memory_mask: Optional[Tensor] = None,
                reg_branches: Optional[nn.ModuleList] = None) -> Tuple[Tensor, Tensor]:
        """
        Args:
            query, query_pos: (bs, num_queries, C) content and positional query.
            reference_points: (bs, num_queries, 2) points (x, y) or (bs, num_queries, 4)
                boxes (cx, cy, w, h), normalized to the unpadded image.
            memory: (bs, num_keys, C) encoder output.
            spatial_shapes, level_start_index: see the encoder.
            valid_ratios: (bs, L, 2).
            memory_mask: (bs, num_keys) bool, True on padded pixels.
            reg_branches: per-layer box regressors for iterative refinement, or None.

        Returns:
            hidden_states (num_layers, bs, num_queries, C) and references
            (num_layers, bs, num_queries, 2|4): the reference after each layer (the input
            reference of layer d + 1).
        """
        mlvl_hidden_states, mlvl_references = [], []
        for layer_id, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                scale = torch.cat([valid_ratios, valid_ratios], -1)  # (bs, L, 4)
            else:
                scale = valid_ratios  # (bs, L, 2)
            # (bs, nq, 1, 2|4) * (bs, 1, L, 2|4) -> (bs, nq, L, 2|4)
            reference_input = reference_points[:, :, None] * scale[:, None]
            query = layer(query=query, query_pos=query_pos, reference_points=reference_input,
                          memory=memory, spatial_shapes=spatial_shapes,
                          level_start_index=level_start_index, memory_mask=memory_mask)
            if reg_branches is not None:
                # A.4: b^d = sigma(delta^d + sigma^-1(b^(d-1))), the next layer's reference;
                # detached: the gradient is blocked at sigma^-1(b^(d-1)) of the next layer
                delta = reg_branches[layer_id](query)  # (bs, nq, 4)
                reference_points = offset_boxes(delta, reference_points).detach()
            mlvl_hidden_states.append(query)
            mlvl_references.append(reference_points)
        return torch.stack(mlvl_hidden_states), torch.stack(mlvl_references)
