# Table 3: ResNeXt-101 + DCN with test-time augmentation (52.3 AP test-dev): horizontal
# flip x 3 scales, merged by mmdet's DetTTAModel (boxes un-flipped, NMS, top 100). The
# paper does not list its test scales; these bracket the training scale 800.
_base_ = './ddetr_x101_32x4d_dcn_refine_twostage.py'

tta_model = dict(  # mmdet's DetTTAModel
    type='DetTTAModel',
    tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))

tta_scales = [(1333, 640), (1333, 800), (1600, 960)]
tta_pipeline = [
    dict(type='LoadImageFromFileSafe', backend_args=None),
    dict(  # mmcv's TestTimeAug: every combination of the lists below
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=scale, keep_ratio=True) for scale in tta_scales],
            [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
            [dict(type='LoadAnnotations', with_bbox=True)],
            [
                dict(  # PackDetInputs
                    type='PackDetInputs',
                    meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                               'scale_factor', 'flip', 'flip_direction')),
            ],
        ]),
]
