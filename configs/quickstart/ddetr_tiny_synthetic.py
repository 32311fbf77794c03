# The quick start: the tiny two-stage Deformable DETR with iterative box refinement of
# _base_tiny_synthetic.py (model and data, shared with the mini sweep) on its own schedule.
# It trains from scratch on 2 CPU cores in minutes, on the built-in synthetic shapes
# dataset (no downloads): python tools/quickstart.py
_base_ = './_base_tiny_synthetic.py'

# The schedule: 2800 iterations of batch 4 (11,200 images, 5.6 epochs), the learning rate
# x0.1 for the last quarter. Against the first quick start's 1800 iterations of batch 8
# (drop at 80 %), it sees 22 % fewer images for the same AP (docs/results.md): at this
# size Deformable DETR learns more per image from more, smaller steps, and a long
# low-learning-rate phase pays (dropping at 65 % instead cost 0.014 AP in a trial).
max_iters = 2800
lr_drop = int(max_iters * 0.75)
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    # fused: one kernel per parameter (torch's default steps each parameter with several
    # kernels in Python, ~15 % of a quick-start step on CPU)
    optimizer=dict(foreach=None, fused=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[lr_drop], gamma=0.1),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
# Progressive resizing (TrainScaleScheduleHook): the first half of the iterations on images
# resized to 0.625 x img_scale (160 px), the next quarter at 0.75 x (192 px), both cheaper
# steps; the last quarter, after the learning-rate drop, at img_scale, the scale of testing
# (docs/performance.md: the same AP in less time).
custom_hooks = [dict(type='TrainScaleScheduleHook', ratios=[0.625, 0.75], milestones=[0.5, 0.75])]
default_hooks = dict(checkpoint=dict(interval=500, max_keep_ckpts=2))
