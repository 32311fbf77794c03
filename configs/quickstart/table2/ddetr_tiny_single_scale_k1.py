# Table 2: single-scale inputs (C5 only), K = 1, no multi-scale attention (39.7 AP at full
# scale), in miniature. Like configs/table2/, the rows change the plain Deformable DETR
# (no refinement, no two-stage: table1/ddetr_tiny.py) by their switches only.
_base_ = '../table1/ddetr_tiny.py'
model = dict(num_feature_levels=1, num_points=1, multi_scale_attention=False)
