# Table 2, row 4: multi-scale inputs, K = 1, no multi-scale attention (41.4 AP): each
# encoder pixel samples its own level only (deformable convolution per level); decoder
# queries read each level on its own and average the levels (see
# MultiScaleDeformableAttention).
_base_ = '../ddetr_r50.py'
model = dict(num_points=1, multi_scale_attention=False)
