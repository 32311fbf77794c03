# Table 1, "+ iterative bounding box refinement" (45.4 AP at full scale) in miniature.
_base_ = './ddetr_tiny.py'
model = dict(with_box_refine=True)
