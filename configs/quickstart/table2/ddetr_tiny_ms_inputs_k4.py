# Table 2: multi-scale inputs, K = 4, no multi-scale attention (42.3 AP at full scale).
_base_ = '../table1/ddetr_tiny.py'
model = dict(multi_scale_attention=False)
