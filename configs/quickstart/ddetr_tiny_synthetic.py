# The quick start: two-stage Deformable DETR with iterative box refinement, scaled down to
# train from scratch on 2 CPU cores in minutes, on the built-in synthetic shapes dataset
# (generated into data/synthetic_shapes/ on first use; no downloads).
# Only what differs from Table 1's two-stage config is set here; the losses, the matcher,
# the positional encoding and the data preprocessor are the paper's.
_base_ = '../ddetr_r50_refine_twostage.py'

data_root = 'data/synthetic_shapes/'
synthetic = dict(num_train=2000, num_val=200, seed=0)  # generator settings (both splits)
num_classes = 6  # circle, square, triangle, star, cross, ring
embed_dims = 128

model = dict(
    num_queries=50,
    backbone=dict(  # mmdet's ResNet-18 at half width, trained from scratch (nothing frozen)
        depth=18,
        base_channels=32,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256], out_channels=embed_dims),  # MultiScaleChannelMapper
    encoder=dict(  # DeformableDetrTransformerEncoder
        num_layers=3,
        layer_cfg=dict(embed_dims=embed_dims, num_heads=4, feedforward_channels=512,
                       dropout=0.0)),
    decoder=dict(  # DeformableDetrTransformerDecoder
        num_layers=3,
        layer_cfg=dict(embed_dims=embed_dims, num_heads=4, feedforward_channels=512,
                       dropout=0.0)),
    bbox_head=dict(num_classes=num_classes, embed_dims=embed_dims))  # DeformableDETRHead

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
# The synthetic data and an iteration-based schedule replace the base config's COCO data
# and 50 epochs wholesale (_delete_). Batches are loaded in the training process
# (num_workers=0): a loader process would compete with the two compute threads for the two
# cores (~4 % a step; loading a batch here takes ~2 ms), and the results are the same as
# with one worker (mmengine seeds the training process and worker 0 alike, so the random
# flips are too).
train_dataloader = dict(
    _delete_=True,
    batch_size=4,
    num_workers=0,  # also needed by TrainScaleScheduleHook (below), which resizes here
    persistent_workers=False,
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
    _delete_=True,
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
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
    _delete_=True,
    type='Coco12Metric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox')
test_evaluator = val_evaluator

# The schedule: 2800 iterations of batch 4 (11,200 images, 5.6 epochs), the learning rate
# x0.1 for the last quarter. Against the first quick start's 1800 iterations of batch 8
# (drop at 80 %), it sees 22 % fewer images for the same AP (README, "Results"): at this
# size Deformable DETR learns more per image from more, smaller steps, and a long
# low-learning-rate phase pays (dropping at 65 % instead cost 0.014 AP in a trial).
max_iters = 2800
lr_drop = int(max_iters * 0.75)
optim_wrapper = dict(
    # bfloat16 autocast on CPU (about 1.7x faster here); on a GPU this runs in float32
    type='CPUAmpOptimWrapper',
    # fused: one kernel per parameter (torch's default steps each parameter with several
    # kernels in Python, ~15 % of a quick-start step on CPU)
    optimizer=dict(lr=4e-4, foreach=None, fused=True),
    # the backbone trains from scratch, so at the full learning rate (no backbone key)
    paramwise_cfg=dict(_delete_=True,
                       custom_keys={'sampling_offsets': dict(lr_mult=0.1),
                                    'reference_points': dict(lr_mult=0.1)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[lr_drop], gamma=0.1),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
# Progressive resizing (TrainScaleScheduleHook): the first half of the iterations on images
# resized to 0.625 x img_scale (160 px), the next quarter at 0.75 x (192 px), both cheaper
# steps; the last quarter, after the learning-rate drop, at img_scale, the scale of testing
# (README, "Results": the same AP in less time).
custom_hooks = [dict(type='TrainScaleScheduleHook', ratios=[0.625, 0.75], milestones=[0.5, 0.75])]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2,
                    save_best=None))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)  # a reproducible quick start
auto_scale_lr = dict(enable=False, base_batch_size=4)
