# Table 2: multi-scale inputs + multi-scale attention, K = 4 (43.8 AP at full scale): the
# plain Deformable DETR unchanged (the same model and run as table1/ddetr_tiny.py).
_base_ = '../table1/ddetr_tiny.py'
