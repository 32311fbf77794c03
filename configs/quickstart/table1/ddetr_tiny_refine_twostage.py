# Table 1, "++ two-stage Deformable DETR" (46.2 AP at full scale) in miniature: the quick
# start's model itself, on the mini sweep schedule.
_base_ = './ddetr_tiny_refine.py'
model = dict(as_two_stage=True)
