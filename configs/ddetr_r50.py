# Deformable DETR, ResNet-50, 50 epochs (Table 1, "Deformable DETR": 43.8 AP on val2017).
_base_ = [
    '_base_/datasets/coco_detection.py',
    '_base_/schedules/schedule_50e.py',
    '_base_/default_runtime.py',
]

model = dict(
    type='DeformableDETR',
    num_queries=300,
    num_feature_levels=4,  # Table 2 "MS inputs" (1 = single-scale: C5 only)
    num_points=4,  # K
    multi_scale_attention=True,  # Table 2 "MS attention"
    with_box_refine=False,
    as_two_stage=False,
    data_preprocessor=dict(  # mmdet's DetDataPreprocessor; RGB, ImageNet mean/std
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),  # pad to the largest image of the batch only
    backbone=dict(  # mmdet's ResNet: C3-C5, stem and stage 1 frozen, BN frozen
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(  # MultiScaleChannelMapper (A.2); num_outs comes from num_feature_levels
        type='MultiScaleChannelMapper',
        in_channels=[512, 1024, 2048],
        out_channels=256,
        norm_cfg=dict(type='GN', num_groups=32)),
    encoder=dict(  # DeformableDetrTransformerEncoder
        num_layers=6,
        layer_cfg=dict(  # DeformableDetrTransformerEncoderLayer (M = 8)
            embed_dims=256, num_heads=8, feedforward_channels=1024, dropout=0.1)),
    decoder=dict(  # DeformableDetrTransformerDecoder
        num_layers=6,
        layer_cfg=dict(  # DeformableDetrTransformerDecoderLayer
            embed_dims=256, num_heads=8, feedforward_channels=1024, dropout=0.1)),
    positional_encoding=dict(  # SinePositionalEncoding; num_feats = embed_dims / 2
        temperature=10000, normalize=True, offset=-0.5),
    bbox_head=dict(
        type='DeformableDETRHead',
        num_classes=80,
        embed_dims=256,
        loss_cls=dict(type='SigmoidFocalLoss', alpha=0.25, gamma=2.0, loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0),
                dict(type='GIoUCost', weight=2.0),
            ])),
    test_cfg=dict(max_per_img=100))
