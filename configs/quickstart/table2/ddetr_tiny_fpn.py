# Table 2: + FPN (43.8 AP at full scale). mmdet's FPN on C3-C5 (GroupNorm, kept from the
# base neck), its 4th level a 3x3 stride-2 conv on C5 as in A.2.
_base_ = '../table1/ddetr_tiny.py'
model = dict(neck=dict(type='FPN', add_extra_convs='on_input'))
