# Table 2: multi-scale inputs, K = 1, no multi-scale attention (41.4 AP at full scale).
_base_ = '../table1/ddetr_tiny.py'
model = dict(num_points=1, multi_scale_attention=False)
