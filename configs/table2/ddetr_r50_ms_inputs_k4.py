# Table 2, row 5: multi-scale inputs, K = 4, no multi-scale attention (42.3 AP).
_base_ = '../ddetr_r50.py'
model = dict(multi_scale_attention=False)
