# + iterative bounding box refinement (Table 1: 45.4 AP).
_base_ = './ddetr_r50.py'
model = dict(with_box_refine=True)
