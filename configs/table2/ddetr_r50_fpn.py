# Table 2, row 1: + FPN (43.8 AP). mmdet's FPN on C3-C5 (GroupNorm, kept from the base
# neck), its 4th level a 3x3 stride-2 conv on C5 as in A.2.
_base_ = '../ddetr_r50.py'
model = dict(neck=dict(type='FPN', add_extra_convs='on_input'))
