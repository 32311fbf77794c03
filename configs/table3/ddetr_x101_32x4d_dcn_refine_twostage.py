# Table 3: ResNeXt-101 (32x4d) + DCN (modulated deformable convolutions, DCNv2, in the
# 3x3 convolutions of stages 2-4), iterative box refinement + two-stage (50.1 AP test-dev).
_base_ = './ddetr_x101_32x4d_refine_twostage.py'
model = dict(
    backbone=dict(  # mmdet's ResNeXt
        dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
