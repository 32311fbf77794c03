# COCO 2017 detection (train2017 / val2017 under data/coco/) with the paper's training
# augmentation (DETR's, Sec. 5): horizontal flip, then either a multi-scale resize (short
# side 480..800 in steps of 32, long side <= 1333) or a resize (short side 400/500/600) ->
# random crop (384..600 per side) -> the same multi-scale resize.
# SafeCocoDataset: mmdet's CocoDataset that clips boxes to the image, reports the boxes it
# drops, and names the file when an image cannot be read (skipped in training, an error in
# testing); LoadImageFromFileSafe turns grayscale and RGBA images into 3 channels.
dataset_type = 'SafeCocoDataset'
data_root = 'data/coco/'
backend_args = None

multi_scale_resize = dict(  # mmdet's RandomChoiceResize
    type='RandomChoiceResize',
    scales=[(short, 1333) for short in range(480, 801, 32)],
    keep_ratio=True)

train_pipeline = [
    dict(type='LoadImageFromFileSafe', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(  # mmcv's RandomChoice: one of the two branches per image
        type='RandomChoice',
        transforms=[
            [multi_scale_resize],
            [
                dict(  # RandomChoiceResize; 4200 = no practical limit on the long side
                    type='RandomChoiceResize',
                    scales=[(400, 4200), (500, 4200), (600, 4200)],
                    keep_ratio=True),
                dict(  # RandomCrop: height and width each uniform in [384, min(600, size)]
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True),
                multi_scale_resize,
            ],
        ]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFileSafe', backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(  # PackDetInputs
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

train_dataloader = dict(
    batch_size=2,  # x 16 GPUs = 32, the paper's total batch
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(  # SafeCocoDataset
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        # the original release trains on every image, with or without objects
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(  # SafeCocoDataset
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(  # mmdet's CocoMetric
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val2017.json',
    metric='bbox',
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
