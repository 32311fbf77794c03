# Table 1, "Deformable DETR" (43.8 AP at full scale) in miniature: the quick-start model
# without iterative box refinement and without two-stage, on the mini sweep schedule.
_base_ = '../_mini_sweep_schedule.py'
model = dict(with_box_refine=False, as_two_stage=False)
