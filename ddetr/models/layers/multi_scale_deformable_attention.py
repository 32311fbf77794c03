"""Multi-scale deformable attention, Eq. 3 of the paper, with the A.4 initialization."""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn

from ddetr.errors import ConfigError
from ddetr.ops import ms_deform_attn
from ddetr.registry import MODELS

from ..fast_paths import zero_masked
from ..utils import geometry_dtype


@MODELS.register_module()
class MultiScaleDeformableAttention(BaseModule):
    r"""Eq. 3: MSDeformAttn(z_q, p_q, {x^l}) =
    sum_m W_m [sum_l sum_k A_mlqk W'_m x^l(phi_l(p_q) + dp_mlqk)].

    One linear layer of the query gives the offsets dp (M*L*K*2 outputs), another the
    attention logits A (M*L*K outputs, softmax); W'_m is ``value_proj``, W_m
    ``output_proj``; the sampling itself is ``ddetr.ops.ms_deform_attn``.

    Reference points are normalized, (0, 0) top-left and (1, 1) bottom-right of each level's
    padded map (callers fold the valid ratios of padded images in):

    - 2-d ``(bs, num_queries, num_levels, 2)`` points (x, y): offsets are in pixels of each
      level, ``loc = p + dp / (W_l, H_l)``.
    - 4-d ``(bs, num_queries, num_levels, 4)`` boxes (cx, cy, w, h), used under iterative
      box refinement and two-stage: offsets are modulated by the box size (A.4),
      ``loc = (cx, cy) + dp / num_points * (w, h) * 0.5``. Dividing by 2K is how the
      original release realises A.4's "biases multiplied by 1/(2K)": the A.4 initial
      offsets (+-k, k <= K) then land inside the box.

    Padded keys (``key_padding_mask`` True) have their projected values zeroed, so they
    contribute nothing however they are sampled.

    Precision: the geometry (reference points, the offset projection ``sampling_offsets``,
    the sampling locations) is float32 (float64 for a float64 model) in every precision
    mode, autocast included; only the value projection and the attention weights follow
    the features' (possibly half) precision. The op receives float32 locations, with the
    values and weights widened to them.

    Multi-scale attention off (``multi_scale=False``, Table 2's "MS attention" column):
    the attention weights are normalized per level (softmax over the K points of one level)
    instead of jointly over the L*K points, and each level's share is fixed rather than
    learned:

    - a query that has a level of its own (an encoder pixel: pass ``query_levels``)
      samples only its own level's map, with weight 1 on that level and 0 on the others;
      with K = 1 this is a deformable convolution on each level separately (Sec. 5.2);
    - a query without a level (a decoder object query: ``query_levels=None``) reads every
      level, each level normalized on its own and the L per-level results averaged with
      the fixed weight 1/L. No cross-level weighting is learned. At the A.4 initialization
      (uniform logits) this coincides with multi-scale attention (1/(LK) per point).

    The layer sizes do not depend on ``multi_scale``: the same weights load either way.

    Args:
        embed_dims (int): C, channels of queries and values.
        num_heads (int): M, attention heads. C must be divisible by M.
        num_levels (int): L, feature levels.
        num_points (int): K, sampling points per head and level.
        multi_scale (bool): joint softmax over levels (the paper's MS attention) or not.
        im2col_step (int): passed to the op (a CUDA tuning knob).
        init_cfg (dict, optional): mmengine init config; the A.4 init is the default.
    """

    def __init__(self, *, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, multi_scale: bool = True, im2col_step: int = 64,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        for name, value in dict(num_heads=num_heads, num_levels=num_levels,
                                num_points=num_points).items():
            if value < 1:
                raise ConfigError(f'MultiScaleDeformableAttention: {name} must be >= 1, '
                                  f'got {value}')
        if embed_dims % num_heads != 0:
            raise ConfigError(f'MultiScaleDeformableAttention: embed_dims ({embed_dims}) must be '
                              f'divisible by num_heads ({num_heads})')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.multi_scale = multi_scale
        self.im2col_step = im2col_step
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A.4 init: zero weights for offsets and attention logits; offset biases point
        head m in one of M directions (M = 8: the 8 neighbours, angle 2*pi*m/M, scaled so
        the larger coordinate is 1) times k for the k-th point (k = 1..K), the same on every
        level; attention biases zero, i.e. uniform 1/(LK); value and output projections
        xavier-uniform with zero bias."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)  # (M, 2)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        k = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        # (M, 1, 1, 2) * (1, 1, K, 1) -> (M, L, K, 2)
        bias = (directions[:, None, None, :] * k[None, None, :, None]).repeat(
            1, self.num_levels, 1, 1)
        self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def init_weights(self) -> None:
        """mmengine's entry point: the A.4 init unless an ``init_cfg`` says otherwise."""
        if self.init_cfg:
            super().init_weights()
        else:
            self.reset_parameters()

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                key_padding_mask: Optional[Tensor] = None,
                query_levels: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            query: (bs, num_queries, C), positional embedding already added.
            reference_points: (bs, num_queries, L, 2) points or (bs, num_queries, L, 4) boxes,
                normalized (see the class docstring).
            value: (bs, num_keys, C), the flattened maps of all levels.
            spatial_shapes: (L, 2) int64 (H, W) of each level.
            level_start_index: (L,) int64 index of each level's first key.
            key_padding_mask: (bs, num_keys) bool, True on padded pixels.
            query_levels: (num_queries,) int64 level of each query; used only when
                ``multi_scale`` is False (see the class docstring).

        Returns:
            (bs, num_queries, C)
        """
        bs, num_queries, _ = query.shape
        num_keys = value.shape[1]
        num_heads, num_levels, num_points = self.num_heads, self.num_levels, self.num_points
        if spatial_shapes.shape != (num_levels, 2):
            raise ValueError(f'MultiScaleDeformableAttention was built for {num_levels} levels '
                             f'but spatial_shapes has shape {tuple(spatial_shapes.shape)}')
        if reference_points.dim() != 4 or reference_points.shape[:3] != (
                bs, num_queries, num_levels) or reference_points.shape[-1] not in (2, 4):
            raise ValueError(f'MultiScaleDeformableAttention: reference_points must be '
                             f'(bs, num_queries, num_levels, 2 or 4) = ({bs}, {num_queries}, '
                             f'{num_levels}, 2 or 4), got {tuple(reference_points.shape)}')

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = zero_masked(value, key_padding_mask[..., None])
        # (bs, num_keys, C) -> (bs, num_keys, M, C / M)
        value = value.view(bs, num_keys, num_heads, self.embed_dims // num_heads)

        # Geometry in float32 (float64 for a float64 model) in every precision mode: the
        # offset projection runs outside autocast, and the reference points are never
        # cast down; only the values and the attention weights may be low precision.
        loc_dtype = geometry_dtype(self.sampling_offsets.weight.dtype, reference_points.dtype)
        with torch.autocast(query.device.type, enabled=False):
            offsets = F.linear(query.to(loc_dtype), self.sampling_offsets.weight.to(loc_dtype),
                               self.sampling_offsets.bias.to(loc_dtype))  # (bs, nq, M*L*K*2)
        reference_points = reference_points.to(loc_dtype)
        # The logits' projection may run in low precision; their softmax runs in the op's
        # dtype (the weights are widened to it anyway), as CUDA's autocast does on its own.
        # On CPU a bfloat16 softmax over L * K = 16 values is also ~6x slower (fwd + bwd).
        logits = self.attention_weights(query).to(loc_dtype)
        if self.multi_scale:
            # (bs, nq, M * L * K) -> (bs, nq, M, L * K): softmax over all levels' points
            weights = logits.view(bs, num_queries, num_heads, num_levels * num_points)
            weights = weights.softmax(-1).view(bs, num_queries, num_heads, num_levels,
                                               num_points)
        else:
            # (bs, nq, M, L, K): softmax within each level, then a fixed share per level
            weights = logits.view(bs, num_queries, num_heads, num_levels, num_points).softmax(-1)
            weights = weights * self._level_shares(query_levels, num_queries, weights)

        # Locations are computed on a (bs, nq, M, L * K * 2) layout: the reference points are
        # repeated over the K points of each level (a copy 1/M the size of the locations)
        # and broadcast over the heads, so every operand's innermost dim is L * K * 2
        # contiguous values (6-d broadcasts whose innermost size is 2 run several times
        # slower on CPU, as does materializing them).

        def per_point(t: Tensor) -> Tensor:
            # (bs, nq, L, 2) -> (bs, nq, L, K, 2) -> (bs, nq, 1, L * K * 2)
            return t[:, :, :, None, :].expand(-1, -1, -1, num_points, -1).reshape(
                bs, num_queries, 1, num_levels * num_points * 2)

        offsets = offsets.view(bs, num_queries, num_heads, num_levels * num_points * 2)
        if reference_points.shape[-1] == 2:
            # offsets in pixels of each level: loc = p + dp / (W_l, H_l)
            inv_size = 1.0 / spatial_shapes.flip(-1).to(loc_dtype)  # (L, 2) as (1 / W, 1 / H)
            # (L, 2) -> (L, K, 2) -> (L * K * 2,)
            inv_size = inv_size[:, None, :].expand(-1, num_points, -1).flatten()
            locations = torch.addcmul(per_point(reference_points), offsets, inv_size)
        else:
            # A.4: offsets modulated by the box size, scaled by 1 / (2K):
            # loc = (cx, cy) + dp * (w, h) / (2K)
            locations = torch.addcmul(per_point(reference_points[..., :2]), offsets,
                                      per_point(reference_points[..., 2:] * (0.5 / num_points)))
        # (bs, nq, M, L * K * 2) -> (bs, nq, M, L, K, 2)
        locations = locations.view(bs, num_queries, num_heads, num_levels, num_points, 2)

        # The op takes one dtype: the locations stay as they are (float32 or wider) and the
        # values and weights, possibly computed in low precision, are widened to them.
        output = ms_deform_attn(value.to(locations.dtype), spatial_shapes, level_start_index,
                                locations, weights.to(locations.dtype), self.im2col_step)
        return self.output_proj(output)

    def _level_shares(self, query_levels: Optional[Tensor], num_queries: int,
                      like: Tensor) -> Tensor:
        """(1, nq, 1, L, 1) weight of each level when multi-scale attention is off: one-hot
        on the query's own level, or 1/L for queries without a level."""
        if query_levels is None:
            return like.new_full((1, 1, 1, self.num_levels, 1), 1.0 / self.num_levels)
        if query_levels.shape != (num_queries,):
            raise ValueError(f'MultiScaleDeformableAttention: query_levels must have shape '
                             f'({num_queries},), got {tuple(query_levels.shape)}')
        one_hot = nn.functional.one_hot(query_levels, self.num_levels).to(like.dtype)
        return one_hot.view(1, num_queries, 1, self.num_levels, 1)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'num_levels={self.num_levels}, num_points={self.num_points}, '
                f'multi_scale={self.multi_scale}')
