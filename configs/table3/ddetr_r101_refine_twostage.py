# Table 3: ResNet-101, iterative box refinement + two-stage (48.7 AP test-dev).
_base_ = '../ddetr_r50_refine_twostage.py'
model = dict(
    backbone=dict(  # mmdet's ResNet
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
