# Table 2: + BiFPN (43.9 AP at full scale), 3 BiFPN layers as in configs/table2/.
_base_ = '../table1/ddetr_tiny.py'
model = dict(neck=dict(type='BiFPN', num_repeats=3))
