"""MMDetection 3.3's DeformableDETR equivalent to a ddetr model config, with the same
weights: the config translation (variant flags, sizes, losses, matcher) and a builder that
initializes mmdet's model and loads its weights into ddetr's through
:mod:`ddetr.converters.mmdetection`.

    from ddetr.converters.mmdet_equivalent import build_equivalent_pair
    ddetr_model, mmdet_model = build_equivalent_pair(cfg.model)

Only what both implement translates: the channel-mapper neck (no BiFPN/FPN of Table 2),
multi-scale attention on, at least as many levels as backbone outputs, and for two-stage
embed_dims 256 (mmdet's proposal embedding hard-codes 128 features per coordinate).
Anything else raises ConversionError naming the setting.
"""
import copy
from typing import Tuple

import torch
from torch import nn

from ddetr.apis.inference import init_weights_quietly
from ddetr.errors import ConversionError

from .mmdetection import convert_state_dict

# ddetr's defaults (DeformableDetrTransformer*Layer, MultiScaleDeformableAttention)
LAYER_DEFAULTS = dict(embed_dims=256, num_heads=8, feedforward_channels=1024, dropout=0.1)


def _loss_cfgs(head: dict) -> dict:
    """ddetr's loss configs -> mmdet's (SigmoidFocalLoss -> FocalLoss(use_sigmoid))."""
    focal = dict(head.get('loss_cls') or dict(alpha=0.25, gamma=2.0, loss_weight=2.0))
    if focal.get('type', 'SigmoidFocalLoss') != 'SigmoidFocalLoss':
        raise ConversionError(f'bbox_head.loss_cls type {focal["type"]} has no mmdet '
                              f'equivalent here (SigmoidFocalLoss only)')
    l1 = dict(head.get('loss_bbox') or dict(loss_weight=5.0))
    giou = dict(head.get('loss_iou') or dict(loss_weight=2.0))
    return dict(
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=focal.get('gamma', 2.0),
                      alpha=focal.get('alpha', 0.25), loss_weight=focal.get('loss_weight', 2.0)),
        loss_bbox=dict(type='L1Loss', loss_weight=l1.get('loss_weight', 5.0)),
        loss_iou=dict(type='GIoULoss', loss_weight=giou.get('loss_weight', 2.0)))


def _assigner_cfg(train_cfg: dict) -> dict:
    """ddetr's HungarianAssigner costs -> mmdet's (boxes are (cx, cy, w, h) there)."""
    weights = dict(FocalLossCost=2.0, BBoxL1Cost=5.0, GIoUCost=2.0)
    for cost in ((train_cfg or {}).get('assigner') or {}).get('match_costs') or []:
        if cost['type'] not in weights:
            raise ConversionError(f'match cost {cost["type"]} has no mmdet equivalent here')
        weights[cost['type']] = cost.get('weight', weights[cost['type']])
    return dict(type='HungarianAssigner', match_costs=[
        dict(type='FocalLossCost', weight=weights['FocalLossCost']),
        dict(type='BBoxL1Cost', weight=weights['BBoxL1Cost'], box_format='xywh'),
        dict(type='IoUCost', iou_mode='giou', weight=weights['GIoUCost'])])


def mmdet_model_cfg(model_cfg: dict) -> dict:
    """The mmdet 3.3 ``DeformableDETR`` model config equivalent to ddetr's ``model_cfg``
    (a config's ``model``). The backbone's ``init_cfg`` is dropped (no download)."""
    cfg = copy.deepcopy(dict(model_cfg))
    if cfg.get('type', 'DeformableDETR') != 'DeformableDETR':
        raise ConversionError(f'model type {cfg.get("type")}: only DeformableDETR translates')
    if not cfg.get('multi_scale_attention', True):
        raise ConversionError('multi_scale_attention=False (Table 2) has no mmdet equivalent')
    neck = dict(cfg['neck'])
    if neck.get('type') != 'MultiScaleChannelMapper':
        raise ConversionError(f'neck {neck.get("type")} has no mmdet equivalent (only '
                              f'MultiScaleChannelMapper -> ChannelMapper)')
    num_levels = cfg.get('num_feature_levels', 4)
    if num_levels < len(neck['in_channels']):
        raise ConversionError(f'num_feature_levels={num_levels} < {len(neck["in_channels"])} '
                              f'backbone outputs: mmdet\'s ChannelMapper maps all inputs')
    layers = {}
    for coder in ('encoder', 'decoder'):
        layer = {**LAYER_DEFAULTS, **dict(cfg[coder].get('layer_cfg') or {})}
        extra = set(layer) - set(LAYER_DEFAULTS) - {'num_levels', 'num_points', 'multi_scale'}
        if extra:
            raise ConversionError(f'{coder}.layer_cfg keys {sorted(extra)} have no mmdet '
                                  f'equivalent')
        layers[coder] = layer
    embed_dims = layers['decoder']['embed_dims']
    as_two_stage = cfg.get('as_two_stage', False)
    if as_two_stage and embed_dims != 256:
        raise ConversionError(f'two-stage with embed_dims={embed_dims}: mmdet\'s proposal '
                              f'embedding only works with 256')
    num_points = cfg.get('num_points', 4)

    def msda(layer):  # mmcv's MultiScaleDeformableAttention (dropout on its output)
        return dict(embed_dims=layer['embed_dims'], num_heads=layer['num_heads'],
                    num_levels=num_levels, num_points=num_points, dropout=layer['dropout'],
                    batch_first=True)

    def ffn(layer):  # mmcv's FFN: dropout after the activation and after the 2nd linear
        return dict(embed_dims=layer['embed_dims'],
                    feedforward_channels=layer['feedforward_channels'],
                    ffn_drop=layer['dropout'])

    enc, dec = layers['encoder'], layers['decoder']
    pos = dict(cfg.get('positional_encoding') or {})
    head = dict(cfg['bbox_head'])
    backbone = dict(cfg['backbone'], init_cfg=None)
    return dict(
        type='DeformableDETR',
        num_queries=cfg.get('num_queries', 300),
        num_feature_levels=num_levels,
        with_box_refine=cfg.get('with_box_refine', False),
        as_two_stage=as_two_stage,
        data_preprocessor=dict(cfg['data_preprocessor']),
        backbone=backbone,
        neck=dict(type='ChannelMapper', in_channels=list(neck['in_channels']), kernel_size=1,
                  out_channels=neck.get('out_channels', 256), act_cfg=None,
                  norm_cfg=neck.get('norm_cfg') or dict(type='GN', num_groups=32),
                  num_outs=num_levels),
        encoder=dict(num_layers=cfg['encoder'].get('num_layers', 6),
                     layer_cfg=dict(self_attn_cfg=msda(enc), ffn_cfg=ffn(enc))),
        decoder=dict(num_layers=cfg['decoder'].get('num_layers', 6), return_intermediate=True,
                     layer_cfg=dict(
                         # mmcv's MultiheadAttention: dropout on the attention weights
                         # and on its output (what its deprecated `dropout` sets)
                         self_attn_cfg=dict(embed_dims=dec['embed_dims'],
                                            num_heads=dec['num_heads'],
                                            attn_drop=dec['dropout'], proj_drop=0.0,
                                            dropout_layer=dict(type='Dropout',
                                                               drop_prob=dec['dropout']),
                                            batch_first=True),
                         cross_attn_cfg=msda(dec), ffn_cfg=ffn(dec)),
                     post_norm_cfg=None),
        positional_encoding=dict(num_feats=embed_dims // 2, normalize=pos.get('normalize', True),
                                 offset=pos.get('offset', -0.5),
                                 temperature=pos.get('temperature', 10000)),
        bbox_head=dict(type='DeformableDETRHead', num_classes=head['num_classes'],
                       embed_dims=embed_dims, sync_cls_avg_factor=True, **_loss_cfgs(head)),
        train_cfg=dict(assigner=_assigner_cfg(cfg.get('train_cfg'))),
        test_cfg=dict(cfg.get('test_cfg') or dict(max_per_img=100)))


def build_mmdet_model(model_cfg: dict, seed: int = 0) -> nn.Module:
    """mmdet's DeformableDETR equivalent to ddetr's ``model_cfg``, initialized by its own
    ``init_weights`` (random, no pretrained backbone) with ``seed``."""
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.utils import register_all_modules as register_mmdet
    from mmengine.registry import DefaultScope
    register_mmdet(init_default_scope=False)
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MMDET_MODELS.build(mmdet_model_cfg(model_cfg))
    init_weights_quietly(model)
    return model


def build_equivalent_pair(model_cfg: dict, seed: int = 0,
                          noise: float = 0.02) -> Tuple[nn.Module, nn.Module]:
    """(ddetr model, mmdet model) with the same weights: mmdet's initialized, Gaussian
    ``noise`` added to every parameter outside the backbone (so that no zero-initialized
    layer hides a difference), then converted with mmdet2ddetr and loaded strictly into
    ddetr's (neck biases zero). Both in eval mode."""
    from ddetr.registry import MODELS
    from ddetr.setup_env import register_all_modules
    mmdet_model = build_mmdet_model(model_cfg, seed)
    if noise:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in mmdet_model.named_parameters():
                if not name.startswith('backbone.'):
                    p.add_(torch.randn(p.shape, generator=gen) * noise)
    register_all_modules()
    ddetr_cfg = copy.deepcopy(dict(model_cfg))
    ddetr_cfg['backbone'] = dict(ddetr_cfg['backbone'], init_cfg=None)
    ddetr_model = MODELS.build(ddetr_cfg)
    state_dict, unmapped, _ = convert_state_dict(mmdet_model.state_dict())
    if unmapped:
        raise ConversionError(f'mmdet keys without a ddetr counterpart: {unmapped[:5]}')
    ddetr_model.load_state_dict(state_dict, strict=True)
    return ddetr_model.eval(), mmdet_model.eval()
