# The tiny model and its data, shared by the quick start (ddetr_tiny_synthetic.py) and the
# mini sweep (_mini_sweep_schedule.py and the rows under table1/, table2/, detr/). Frozen:
# both have measured results that rest on it. What differs between them, the schedule
# (iterations, batch, learning-rate steps, optimizer kernel, progressive resizing,
# checkpoints), is set in those two files only.
#
# Two-stage Deformable DETR with iterative box refinement, scaled down to train from
# scratch on 2 CPU cores in minutes, on the built-in synthetic shapes dataset (generated
# into data/synthetic_shapes/ on first use; no downloads). Only what differs from Table 1's
# two-stage config is set here; the losses, the matcher, the positional encoding and the
# data preprocessor are the paper's.
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
# The synthetic data replaces the base config's COCO data wholesale (_delete_); the
# training batch size is the schedule's. Batches are loaded in the training process
# (num_workers=0): a loader process would compete with the two compute threads for the two
# cores (~4 % a step; loading a batch here takes ~2 ms), and the results are the same as
# with one worker (mmengine seeds the training process and worker 0 alike, so the random
# flips are too).
train_dataloader = dict(
    _delete_=True,
    num_workers=0,  # also needed by TrainScaleScheduleHook, which resizes in this process
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

# The optimizer without its kernel (foreach / fused: the schedule's), and an
# iteration-based loop instead of the paper's 50 epochs.
optim_wrapper = dict(
    # bfloat16 autocast on CPU (about 1.7x faster here); on a GPU this runs in float32
    type='CPUAmpOptimWrapper',
    optimizer=dict(lr=4e-4),
    # the backbone trains from scratch, so at the full learning rate (no backbone key)
    paramwise_cfg=dict(_delete_=True,
                       custom_keys={'sampling_offsets': dict(lr_mult=0.1),
                                    'reference_points': dict(lr_mult=0.1)}))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, save_best=None))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)  # reproducible runs
auto_scale_lr = dict(enable=False, base_batch_size=4)
