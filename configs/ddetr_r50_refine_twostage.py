# ++ two-stage Deformable DETR (Table 1: 46.2 AP).
_base_ = './ddetr_r50_refine.py'
model = dict(as_two_stage=True)
