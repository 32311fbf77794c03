"""Deformable DETR (Zhu et al., ICLR 2021): the detector, its variants (iterative box
refinement, two-stage) and the ablation switches of Table 2."""
import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmdet.models.detectors.base import BaseDetector
from torch import Tensor, nn

from ddetr.errors import ConfigError
from ddetr.ops import check_level_shapes
from ddetr.registry import MODELS

from ..fast_paths import backbone_input, use_channels_last_max_pool, zero_masked
from ..layers import (
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
    MultiScaleDeformableAttention,
    SinePositionalEncoding,
    sine_embed,
)
from ..utils import geometry_dtype, inverse_sigmoid, level_shapes


def _derive(cfg: dict, key: str, value, owner: str, where: str) -> None:
    """Write a setting the detector owns into a sub-config; a different value already there
    is a conflict (it would otherwise be silently ignored or silently win)."""
    if key in cfg and cfg[key] != value:
        raise ConfigError(f'DeformableDETR: {where}.{key}={cfg[key]!r} conflicts with the '
                          f'detector\'s {owner}={value!r}; set it on the detector only')
    cfg[key] = value


@MODELS.register_module()
class DeformableDETR(BaseDetector):
    """Backbone -> multi-scale maps (neck) -> deformable encoder -> decoder -> head.

    The forward pass follows four steps, each returning keyword dicts for the next:
    ``pre_transformer`` (masks, positional + level embeddings, flattening) ->
    ``forward_encoder`` -> ``pre_decoder`` (object queries and their reference points, or
    two-stage proposals) -> ``forward_decoder``.

    The detector owns the variant flags and the ablation switches and writes what they
    imply into the sub-configs (setting them there too is an error when they differ):

    - ``with_box_refine``: head ``share_pred_layer = not with_box_refine``; the decoder
      refines its reference boxes layer by layer with the head's box branches (A.4).
    - ``as_two_stage``: head ``as_two_stage`` and ``num_pred_layer = decoder layers + 1``;
      queries come from encoder proposals (A.4) instead of learned embeddings.
    - ``num_feature_levels`` (L, 4; 1 = single-scale inputs): the neck's ``num_outs`` and
      the attention modules' ``num_levels``.
    - ``num_points`` (K, 4) and ``multi_scale_attention`` (True): the encoder's and
      decoder's deformable attention (see MultiScaleDeformableAttention for what "off"
      means for encoder pixels and for decoder queries).
    - the positional encoding's ``num_feats`` = embed_dims / 2.

    Images are padded to the largest of the batch (DetDataPreprocessor, pad_size_divisor
    1); the mask is True on padding, from each sample's ``img_shape``.

    Args:
        backbone, neck (dict): configs (mmdet's ResNet, MultiScaleChannelMapper...).
        encoder (dict): DeformableDetrTransformerEncoder kwargs (num_layers, layer_cfg).
        decoder (dict): DeformableDetrTransformerDecoder kwargs (num_layers, layer_cfg).
        bbox_head (dict): DeformableDETRHead config.
        positional_encoding (dict): SinePositionalEncoding kwargs.
        num_queries (int): object queries (300), also the number of two-stage proposals.
        num_feature_levels, num_points, multi_scale_attention: see above.
        with_box_refine, as_two_stage (bool): the variants of Table 1.
        train_cfg, test_cfg (dict): passed to the head (assigner; max_per_img).
        data_preprocessor (dict): DetDataPreprocessor config.
    """

    def __init__(self, *, backbone: dict, neck: dict, encoder: dict, decoder: dict,
                 bbox_head: dict, positional_encoding: Optional[dict] = None,
                 num_queries: int = 300, num_feature_levels: int = 4, num_points: int = 4,
                 multi_scale_attention: bool = True, with_box_refine: bool = False,
                 as_two_stage: bool = False, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, data_preprocessor: Optional[dict] = None,
                 init_cfg=None) -> None:
        if isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if num_queries < 1 or num_feature_levels < 1 or num_points < 1:
            raise ConfigError(f'DeformableDETR: num_queries ({num_queries}), num_feature_levels '
                              f'({num_feature_levels}) and num_points ({num_points}) must be >= 1')
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.num_points = num_points
        self.multi_scale_attention = multi_scale_attention
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg

        neck, encoder, decoder, bbox_head = (copy.deepcopy(dict(c))
                                             for c in (neck, encoder, decoder, bbox_head))
        _derive(neck, 'num_outs', num_feature_levels, 'num_feature_levels', 'neck')
        for name, coder in (('encoder', encoder), ('decoder', decoder)):
            coder['layer_cfg'] = layer_cfg = dict(coder.get('layer_cfg') or {})
            where = f'{name}.layer_cfg'
            _derive(layer_cfg, 'num_levels', num_feature_levels, 'num_feature_levels', where)
            _derive(layer_cfg, 'num_points', num_points, 'num_points', where)
            _derive(layer_cfg, 'multi_scale', multi_scale_attention, 'multi_scale_attention',
                    where)
        num_decoder_layers = decoder.get('num_layers', 6)
        _derive(bbox_head, 'share_pred_layer', not with_box_refine, 'with_box_refine',
                'bbox_head')
        _derive(bbox_head, 'num_pred_layer',
                num_decoder_layers + 1 if as_two_stage else num_decoder_layers,
                'as_two_stage and decoder.num_layers', 'bbox_head')
        _derive(bbox_head, 'as_two_stage', as_two_stage, 'as_two_stage', 'bbox_head')
        bbox_head.update(train_cfg=train_cfg, test_cfg=test_cfg)

        self.backbone = MODELS.build(backbone)
        use_channels_last_max_pool(self.backbone)  # the same pooling, faster on CPU (fast_paths)
        self.neck = MODELS.build(neck)
        self.encoder = DeformableDetrTransformerEncoder(**encoder)
        self.decoder = DeformableDetrTransformerDecoder(**decoder)
        self.embed_dims = embed_dims = self.decoder.embed_dims
        if self.encoder.embed_dims != embed_dims:
            raise ConfigError(f'DeformableDETR: encoder embed_dims ({self.encoder.embed_dims}) '
                              f'and decoder embed_dims ({embed_dims}) differ')
        if embed_dims % 2:
            raise ConfigError(f'DeformableDETR: embed_dims must be even, got {embed_dims}')
        positional_encoding = dict(positional_encoding or {})
        _derive(positional_encoding, 'num_feats', embed_dims // 2, 'embed_dims / 2',
                'positional_encoding')
        self.positional_encoding = SinePositionalEncoding(**positional_encoding)
        self.bbox_head = MODELS.build(bbox_head)

        # Sec. 4.1: a learned embedding e_l per level, added to the positional encoding
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, embed_dims))
        if as_two_stage:
            # A.4: encoder pixels -> proposals; proposal boxes -> (query_pos, query)
            self.memory_trans_fc = nn.Linear(embed_dims, embed_dims)
            self.memory_trans_norm = nn.LayerNorm(embed_dims)
            self.pos_trans_fc = nn.Linear(2 * embed_dims, 2 * embed_dims)
            self.pos_trans_norm = nn.LayerNorm(2 * embed_dims)
        else:
            # [:, :C] positional query embedding, [:, C:] content query
            self.query_embedding = nn.Embedding(num_queries, 2 * embed_dims)
            # Sec. 4.1: reference point = sigmoid(Linear(query embedding))
            self.reference_points_fc = nn.Linear(embed_dims, 2)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The original release's init of the transformer: xavier-uniform on every matrix
        of the encoder, decoder and the two-stage projections, then the A.4 init of each
        deformable attention, the reference-point projection xavier with zero bias, and
        the level embeddings N(0, 1). (Backbone, neck and head init themselves.)"""
        modules = [self.encoder, self.decoder]
        if self.as_two_stage:
            modules += [self.memory_trans_fc, self.pos_trans_fc]
        for module in modules:
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        if not self.as_two_stage:
            nn.init.xavier_uniform_(self.reference_points_fc.weight, gain=1.0)
            nn.init.zeros_(self.reference_points_fc.bias)
        nn.init.normal_(self.level_embed)

    def init_weights(self) -> None:
        """mmengine's init: sub-modules first (pretrained backbone, neck, head), then the
        transformer's own init above."""
        super().init_weights()
        self.reset_parameters()

    # ------------------------------------------------------------ mmdet API
    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor, ...]:
        """(bs, 3, H, W) -> the neck's L maps (bs, C, H_l, W_l), finest first (in CPU
        inference the images enter the backbone channels-last: ``fast_paths``)."""
        mlvl_feats = self.neck(self.backbone(backbone_input(batch_inputs)))
        if len(mlvl_feats) != self.num_feature_levels:
            raise ValueError(f'DeformableDETR: the neck gave {len(mlvl_feats)} maps but '
                             f'num_feature_levels is {self.num_feature_levels}')
        return tuple(mlvl_feats)

    def loss(self, batch_inputs: Tensor, batch_data_samples) -> Dict[str, Tensor]:
        head_inputs = self.forward_transformer(batch_inputs, batch_data_samples)
        return self.bbox_head.loss(**head_inputs, batch_data_samples=batch_data_samples)

    def predict(self, batch_inputs: Tensor, batch_data_samples, rescale: bool = True):
        head_inputs = self.forward_transformer(batch_inputs, batch_data_samples)
        head_inputs.pop('enc_outputs_class', None)
        head_inputs.pop('enc_outputs_coord', None)
        results = self.bbox_head.predict(**head_inputs, batch_data_samples=batch_data_samples,
                                         rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(self, batch_inputs: Tensor, batch_data_samples=None) -> Tuple[Tensor, ...]:
        """'tensor' mode: (all_cls_scores (num_layers, bs, nq, num_classes), all_bbox_preds
        (num_layers, bs, nq, 4) normalized (cx, cy, w, h)), followed for two-stage by the
        encoder's (enc_outputs_class (bs, num_keys, num_classes), enc_outputs_coord
        (bs, num_keys, 4))."""
        head_inputs = self.forward_transformer(batch_inputs, batch_data_samples)
        outputs = self.bbox_head(head_inputs['hidden_states'], head_inputs['references'])
        if self.as_two_stage:
            outputs += (head_inputs['enc_outputs_class'], head_inputs['enc_outputs_coord'])
        return outputs

    # ----------------------------------------------------------- the pipeline
    def forward_transformer(self, batch_inputs: Tensor, batch_data_samples=None,
                            masks: Optional[Tensor] = None) -> Dict:
        """Features, then pre_transformer -> encoder -> pre_decoder -> decoder. Returns the
        head's inputs: hidden_states, references and, two-stage, the encoder outputs.

        ``masks`` (bs, H, W) bool, True on padding, replaces the one built from the samples'
        ``img_shape`` (the ONNX export builds it from a graph input)."""
        if masks is None:
            masks = self.padding_masks(batch_inputs, batch_data_samples)
            any_padding = self.any_padding(batch_inputs, batch_data_samples)
        else:
            any_padding = True  # a given mask is not read back (it may be a traced input)
        mlvl_feats = self.extract_feat(batch_inputs)
        encoder_inputs, decoder_inputs = self.pre_transformer(mlvl_feats, masks)
        memory_mask = decoder_inputs['memory_mask']
        if not any_padding:
            # The attention layers' masks would zero no value: skip them (each costs a copy
            # of the projected values, forward and backward). Same results.
            encoder_inputs['key_padding_mask'] = decoder_inputs['memory_mask'] = None
        memory = self.forward_encoder(**encoder_inputs)
        query_inputs, head_inputs = self.pre_decoder(
            memory=memory, memory_mask=memory_mask, spatial_shapes=encoder_inputs['mlvl_shapes'])
        head_inputs.update(self.forward_decoder(memory=memory, **query_inputs,
                                                **decoder_inputs))
        return head_inputs

    @staticmethod
    def any_padding(batch_inputs: Tensor, batch_data_samples=None) -> bool:
        """Whether some sample's ``img_shape`` is smaller than the padded batch (what
        :meth:`padding_masks` marks), read from the metainfo without touching the device."""
        height, width = batch_inputs.shape[-2:]
        for sample in batch_data_samples or ():
            img_shape = sample.metainfo.get('img_shape')
            if img_shape is not None and (img_shape[0] < height or img_shape[1] < width):
                return True
        return False

    @staticmethod
    def padding_masks(batch_inputs: Tensor, batch_data_samples=None) -> Tensor:
        """(bs, H, W) bool, True on padded pixels: outside each sample's ``img_shape`` in
        the padded batch. Without data samples nothing is padding."""
        bs, _, height, width = batch_inputs.shape
        masks = batch_inputs.new_zeros((bs, height, width), dtype=torch.bool)
        if batch_data_samples is None:
            return masks
        if len(batch_data_samples) != bs:
            raise ValueError(f'DeformableDETR: {bs} images but {len(batch_data_samples)} '
                             f'data samples')
        for img_id, sample in enumerate(batch_data_samples):
            img_shape = sample.metainfo.get('img_shape')
            if img_shape is None:
                continue
            img_h, img_w = img_shape[:2]
            if img_h > height or img_w > width:
                raise ValueError(f'DeformableDETR: img_shape {tuple(img_shape)} of sample '
                                 f'{img_id} is larger than the batch ({height}, {width})')
            masks[img_id, img_h:, :] = True
            masks[img_id, :, img_w:] = True
        return masks

    def pre_transformer(self, mlvl_feats: Tuple[Tensor, ...],
                        masks: Tensor) -> Tuple[Dict, Dict]:
        """Per level: the mask resized (nearest) to the map, the sine positional encoding of
        the unpadded region plus the level embedding, and the valid ratios; then all levels
        flattened and concatenated (num_keys = sum_l H_l W_l). The levels' (H, W) are also
        kept as Python ints (``mlvl_shapes``, from the maps' shapes), so nothing downstream
        reads ``spatial_shapes`` back from the device."""
        mlvl_flat, mlvl_pos, mlvl_masks, mlvl_shapes, mlvl_ratios = [], [], [], [], []
        for level, feat in enumerate(mlvl_feats):
            bs, channels, height, width = feat.shape
            mask = F.interpolate(masks[None].float(), size=(height, width))[0].bool()
            pos = self.positional_encoding(mask).to(feat.dtype)  # (bs, C, H, W)
            # (bs, C, H, W) -> (bs, H*W, C)
            mlvl_flat.append(feat.flatten(2).transpose(1, 2))
            mlvl_pos.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level])
            mlvl_masks.append(mask.flatten(1))  # (bs, H*W)
            mlvl_shapes.append((height, width))
            mlvl_ratios.append(self.valid_ratios(mask))  # (bs, 2)
        device = mlvl_feats[0].device
        if torch.jit.is_tracing():  # an ONNX export: the sizes stay symbolic (--dynamic)
            spatial_shapes = torch.stack([torch.stack(hw) for hw in mlvl_shapes]).to(device)
            level_start_index = torch.cat([spatial_shapes.new_zeros(1),
                                           spatial_shapes.prod(1).cumsum(0)[:-1]])
        else:
            spatial_shapes = torch.as_tensor(mlvl_shapes, dtype=torch.int64, device=device)
            mlvl_starts = [0]
            for height, width in mlvl_shapes[:-1]:
                mlvl_starts.append(mlvl_starts[-1] + height * width)
            level_start_index = torch.as_tensor(mlvl_starts, dtype=torch.int64, device=device)
            # the op's value rules, once per forward on the ints (the op then reads no values)
            check_level_shapes(mlvl_shapes, sum(f.shape[1] for f in mlvl_flat), mlvl_starts)
        valid_ratios = torch.stack(mlvl_ratios, 1)  # (bs, L, 2), float32 (geometry)
        memory_mask = torch.cat(mlvl_masks, 1)  # (bs, num_keys)
        encoder_inputs = dict(query=torch.cat(mlvl_flat, 1), query_pos=torch.cat(mlvl_pos, 1),
                              key_padding_mask=memory_mask, spatial_shapes=spatial_shapes,
                              level_start_index=level_start_index, valid_ratios=valid_ratios,
                              mlvl_shapes=mlvl_shapes)
        decoder_inputs = dict(memory_mask=memory_mask, spatial_shapes=spatial_shapes,
                              level_start_index=level_start_index, valid_ratios=valid_ratios)
        return encoder_inputs, decoder_inputs

    @staticmethod
    def valid_ratios(mask: Tensor) -> Tensor:
        """(bs, H, W) padding mask -> (bs, 2): the unpadded fraction (w, h) of the map,
        measured on its first row and column."""
        height, width = mask.shape[-2:]
        valid_h = (~mask[:, :, 0]).sum(1).float() / height
        valid_w = (~mask[:, 0, :]).sum(1).float() / width
        return torch.stack([valid_w, valid_h], -1)

    def forward_encoder(self, query: Tensor, query_pos: Tensor, key_padding_mask: Tensor,
                        spatial_shapes: Tensor, level_start_index: Tensor,
                        valid_ratios: Tensor,
                        mlvl_shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Tensor:
        """-> memory (bs, num_keys, C)."""
        return self.encoder(query=query, query_pos=query_pos, spatial_shapes=spatial_shapes,
                            level_start_index=level_start_index, valid_ratios=valid_ratios,
                            key_padding_mask=key_padding_mask, mlvl_shapes=mlvl_shapes)

    def pre_decoder(self, memory: Tensor, memory_mask: Tensor,
                    spatial_shapes: Union[Tensor, Sequence[Tuple[int, int]]]
                    ) -> Tuple[Dict, Dict]:
        """Object queries (query, query_pos: (bs, nq, C)) and their initial reference:
        single-stage, learned embeddings and 2-d points sigmoid(Linear(query_pos)) (Sec. 4.1);
        two-stage, the top-scoring encoder proposals as 4-d boxes whose positional
        embedding gives the queries (A.4). ``spatial_shapes``: the levels' (H, W) as Python
        ints, or an (L, 2) tensor (read back from the device). Returns (decoder inputs,
        head inputs)."""
        bs = memory.shape[0]
        if not self.as_two_stage:
            query_pos, query = self.query_embedding.weight.split(self.embed_dims, dim=1)
            query_pos = query_pos[None].expand(bs, -1, -1)
            query = query[None].expand(bs, -1, -1)
            # geometry: in float32 outside autocast (the embedding is a float32 parameter)
            dtype = geometry_dtype(query_pos.dtype)
            with torch.autocast(query_pos.device.type, enabled=False):
                reference_points = F.linear(
                    query_pos.to(dtype), self.reference_points_fc.weight.to(dtype),
                    self.reference_points_fc.bias.to(dtype)).sigmoid()  # (bs, nq, 2)
            return dict(query=query, query_pos=query_pos,
                        reference_points=reference_points), {}

        num_keys = memory.shape[1]
        if num_keys < self.num_queries:
            raise ValueError(f'DeformableDETR (two-stage): the encoder has {num_keys} pixels, '
                             f'fewer than num_queries={self.num_queries} proposals to pick; '
                             f'use larger images or fewer queries')
        output_memory, output_proposals = self.encoder_proposals(
            memory=memory, memory_mask=memory_mask, spatial_shapes=spatial_shapes)
        encoder_layer = self.decoder.num_layers  # the head's extra (last) branches
        enc_outputs_class = self.bbox_head.cls_branches[encoder_layer](output_memory)
        # A.4: b_i = sigma(delta_i + sigma^-1(proposal_i)), kept unnormalized here; the
        # sum in logit space is geometry: float32 like the proposals
        delta = self.bbox_head.reg_branches[encoder_layer](output_memory)  # (bs, num_keys, 4)
        enc_outputs_unact = delta.to(output_proposals.dtype) + output_proposals
        # top-k by the class-agnostic "object" score (channel 0), no NMS (Sec. 4.2). As in
        # the original release, padded and invalid pixels are not excluded: their zeroed
        # memory gives them all one score, and a picked one starts from the whole image
        # (sigmoid(+inf) = 1).
        topk_inds = enc_outputs_class[..., 0].topk(self.num_queries, dim=1)[1]  # (bs, nq)
        topk_unact = enc_outputs_unact.gather(1, topk_inds[..., None].expand(-1, -1, 4))
        reference_points = topk_unact.detach().sigmoid()  # (bs, nq, 4) initial boxes
        # (bs, nq, 4) in [0, 2 pi] -> (bs, nq, 4 * C / 2): the proposals' sine embedding
        pos_embed = sine_embed(reference_points * (2 * math.pi), self.embed_dims // 2,
                               self.positional_encoding.temperature).to(memory.dtype)
        pos_trans = self.pos_trans_norm(self.pos_trans_fc(pos_embed))
        query_pos, query = pos_trans.split(self.embed_dims, dim=-1)
        head_inputs = dict(enc_outputs_class=enc_outputs_class,
                           enc_outputs_coord=enc_outputs_unact.sigmoid())
        return dict(query=query, query_pos=query_pos,
                    reference_points=reference_points), head_inputs

    def encoder_proposals(self, memory: Tensor, memory_mask: Tensor,
                          spatial_shapes: Union[Tensor, Sequence[Tuple[int, int]]]
                          ) -> Tuple[Tensor, Tensor]:
        """A.4's first stage: one proposal per encoder pixel i of level l, centred on the
        pixel (normalized to the unpadded image) with size 0.05 * 2^l, in sigma^-1 space.
        Proposals outside (0.01, 0.99) in any coordinate and those on padding are invalid:
        +inf (sigmoid 1) and their memory zeroed before Linear + LayerNorm.

        Returns output_memory (bs, num_keys, C) and output_proposals (bs, num_keys, 4)
        unnormalized (cx, cy, w, h), float32 (float64 for a float64 memory) whatever the
        memory's dtype: proposals are geometry."""
        bs = memory.shape[0]
        dtype = geometry_dtype(memory.dtype)
        mlvl_proposals = []
        start = 0
        for level, (height, width) in enumerate(level_shapes(spatial_shapes)):
            # (bs, H*W) -> (bs, H, W)
            mask = memory_mask[:, start:start + height * width].view(bs, height, width)
            valid_h = (~mask[:, :, 0]).sum(1)  # (bs,)
            valid_w = (~mask[:, 0, :]).sum(1)
            scale = torch.stack([valid_w, valid_h], -1).to(dtype).view(bs, 1, 1, 2)
            ys = torch.arange(height, dtype=dtype, device=memory.device)
            xs = torch.arange(width, dtype=dtype, device=memory.device)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
            grid = torch.stack([grid_x, grid_y], -1)  # (H, W, 2) as (x, y)
            centers = (grid[None] + 0.5) / scale  # (bs, H, W, 2)
            sizes = torch.full_like(centers, 0.05 * 2.0 ** level)
            # (bs, H, W, 4) -> (bs, H*W, 4) as (cx, cy, w, h)
            mlvl_proposals.append(torch.cat([centers, sizes], -1).view(bs, -1, 4))
            start += height * width
        proposals = torch.cat(mlvl_proposals, 1)  # (bs, num_keys, 4)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        invalid = memory_mask[..., None] | ~valid  # (bs, num_keys, 1)
        with torch.autocast(memory.device.type, enabled=False):
            output_proposals = inverse_sigmoid(proposals).masked_fill(invalid, float('inf'))
        output_memory = zero_masked(memory, invalid)
        output_memory = self.memory_trans_norm(self.memory_trans_fc(output_memory))
        return output_memory, output_proposals

    def forward_decoder(self, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                        memory: Tensor, memory_mask: Tensor, spatial_shapes: Tensor,
                        level_start_index: Tensor, valid_ratios: Tensor) -> Dict:
        """-> hidden_states (num_layers, bs, nq, C) and references: the reference each
        layer used (the initial one, then each layer's refined box when refining)."""
        hidden_states, inter_references = self.decoder(
            query=query, query_pos=query_pos, reference_points=reference_points, memory=memory,
            spatial_shapes=spatial_shapes, level_start_index=level_start_index,
            valid_ratios=valid_ratios, memory_mask=memory_mask,
            reg_branches=self.bbox_head.reg_branches if self.with_box_refine else None)
        references: List[Tensor] = [reference_points] + list(inter_references[:-1])
        return dict(hidden_states=hidden_states, references=references)
