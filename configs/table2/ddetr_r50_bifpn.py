# Table 2, row 2: + BiFPN (43.9 AP), 3 BiFPN layers (EfficientDet-D0's depth; the paper
# does not give one) on top of the A.2 maps.
_base_ = '../ddetr_r50.py'
model = dict(neck=dict(type='BiFPN', num_repeats=3))
