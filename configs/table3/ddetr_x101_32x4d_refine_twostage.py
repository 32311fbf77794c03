# Table 3: ResNeXt-101 (32x4d), iterative box refinement + two-stage (49.0 AP test-dev).
_base_ = '../ddetr_r50_refine_twostage.py'
model = dict(
    backbone=dict(  # mmdet's ResNeXt
        type='ResNeXt',
        depth=101,
        groups=32,
        base_width=4,
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://resnext101_32x4d')))
