# DETR, the paper's convergence baseline, in miniature: MMDetection's own DETR detector,
# DETRHead, transformer and losses, built from mmdet's registry (`_scope_='mmdet'`: the
# model and everything it builds inside come from mmdet, nothing from ddetr). Same
# backbone (ResNet-18 at half width from scratch; DETR reads C5 only), width (128),
# depth (3 + 3 layers, 4 heads, FFN 512, no dropout), queries (50), data, seed, optimizer
# and schedule (_mini_sweep_schedule.py) as the Deformable DETR rows. DETR keeps its own
# loss (softmax cross-entropy with a no-object class) and matching costs, as in the paper.
_base_ = '../_mini_sweep_schedule.py'

embed_dims = 128  # = the quick start's; tests/test_configs.py checks they agree
num_heads = 4
ffn = dict(embed_dims=embed_dims, feedforward_channels=512, num_fcs=2, ffn_drop=0.0,
           act_cfg=dict(type='ReLU', inplace=True))
attn = dict(embed_dims=embed_dims, num_heads=num_heads, attn_drop=0.0, proj_drop=0.0,
            batch_first=True)

model = dict(
    _delete_=True,
    _scope_='mmdet',
    type='DETR',  # mmdet.models.detectors.DETR
    num_queries=50,
    data_preprocessor=dict(  # mmdet's DetDataPreprocessor, as the Deformable DETR rows
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(  # mmdet's ResNet-18 at half width, from scratch, C5 only
        type='ResNet',
        depth=18,
        base_channels=32,
        num_stages=4,
        out_indices=(3, ),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None),
    neck=dict(  # mmdet's ChannelMapper: C5 (256 channels at half width) -> embed_dims
        type='ChannelMapper',
        in_channels=[256],
        kernel_size=1,
        out_channels=embed_dims,
        act_cfg=None,
        norm_cfg=None,
        num_outs=1),
    encoder=dict(  # mmdet's DetrTransformerEncoder
        num_layers=3, layer_cfg=dict(self_attn_cfg=attn, ffn_cfg=ffn)),
    decoder=dict(  # mmdet's DetrTransformerDecoder
        num_layers=3,
        layer_cfg=dict(self_attn_cfg=attn, cross_attn_cfg=attn, ffn_cfg=ffn),
        return_intermediate=True),
    positional_encoding=dict(num_feats=embed_dims // 2, normalize=True),
    bbox_head=dict(  # mmdet's DETRHead
        type='DETRHead',
        num_classes=6,
        embed_dims=embed_dims,
        loss_cls=dict(type='CrossEntropyLoss', bg_cls_weight=0.1, use_sigmoid=False,
                      loss_weight=1.0, class_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='ClassificationCost', weight=1.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0),
            ])),
    # DETRHead keeps one box per query (softmax), so at most num_queries boxes an image
    test_cfg=dict(max_per_img=50))

# the sweep table's K column: DETR samples no points (dense attention)
sweep_row = dict(num_points='–')
