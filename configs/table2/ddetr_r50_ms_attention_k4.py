# Table 2, row 6: multi-scale inputs + multi-scale attention, K = 4 (43.8 AP): the base
# Deformable DETR, unchanged.
_base_ = '../ddetr_r50.py'
