# The quick start: two-stage Deformable DETR with iterative box refinement, scaled down to
# train from scratch on 2 CPU cores in minutes, on the built-in synthetic shapes dataset
# (generated into data/synthetic_shapes/ on first use; no downloads).
_base_ = ['../_base_/default_runtime.py']

data_root = 'data/synthetic_shapes/'
synthetic = dict(num_train=2000, num_val=200, seed=0)  # generator settings (both splits)
num_classes = 6  # circle, square, triangle, star, cross, ring
embed_dims = 128

model = dict(
    type='DeformableDETR',
    num_queries=50,
    num_feature_levels=4,
    num_points=4,
    multi_scale_attention=True,
    with_box_refine=True,
    as_two_stage=True,
    data_preprocessor=dict(  # mmdet's DetDataPreprocessor
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(  # mmdet's ResNet-18 at half width, trained from scratch (nothing frozen)
        type='ResNet',
        depth=18,
        base_channels=32,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None),
    neck=dict(  # MultiScaleChannelMapper (A.2)
        type='MultiScaleChannelMapper',
        in_channels=[64, 128, 256],
        out_channels=embed_dims,
        norm_cfg=dict(type='GN', num_groups=32)),
    encoder=dict(  # DeformableDetrTransformerEncoder
        num_layers=3,
        layer_cfg=dict(embed_dims=embed_dims, num_heads=4, feedforward_channels=512,
                       dropout=0.0)),
    decoder=dict(  # DeformableDetrTransformerDecoder
        num_layers=3,
        layer_cfg=dict(embed_dims=embed_dims, num_heads=4, feedforward_channels=512,
                       dropout=0.0)),
    positional_encoding=dict(temperature=10000, normalize=True, offset=-0.5),
    bbox_head=dict(
        type='DeformableDETRHead',
        num_classes=num_classes,
        embed_dims=embed_dims,
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

img_scale = (256, 256)  # every image resized (aspect kept) so its longer side is 256 px
train_pipeline = [
    dict(type='LoadImageFromFileSafe'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFileSafe'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(  # SyntheticShapesDataset: mmdet's CocoDataset that generates its data
        type='SyntheticShapesDataset',
        data_root=data_root,
        synthetic=synthetic,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='SyntheticShapesDataset',
        data_root=data_root,
        synthetic=synthetic,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(  # Coco12Metric: mmdet's CocoMetric reporting all 12 COCO metrics
    type='Coco12Metric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox')
test_evaluator = val_evaluator

max_iters = 1800
optim_wrapper = dict(
    # bfloat16 autocast on CPU (about 1.7x faster here); on a GPU this runs in float32
    type='CPUAmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'sampling_offsets': dict(lr_mult=0.1),
                                    'reference_points': dict(lr_mult=0.1)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.8)], gamma=0.1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=250, max_keep_ckpts=2,
                    save_best=None))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)  # a reproducible quick start
auto_scale_lr = dict(enable=False, base_batch_size=8)
