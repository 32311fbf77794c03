# Table 2, row 3: single-scale inputs (C5 only), K = 1, no multi-scale attention (39.7 AP).
_base_ = '../ddetr_r50.py'
model = dict(num_feature_levels=1, num_points=1, multi_scale_attention=False)
