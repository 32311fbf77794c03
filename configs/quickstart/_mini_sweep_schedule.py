# The mini sweep's schedule: THE one knob for every row of configs/quickstart/{table1,
# table2,detr}. Each row inherits this file (through table1/ddetr_tiny.py or directly),
# so changing `max_iters` here shortens or lengthens all rows equally: the validation
# points (every 20% of the schedule, for the convergence curves), the LR drop (at 80%)
# and the checkpoints (at every validation, so an interrupted row resumes from its last
# one) follow it. Rows must not set their own schedule (tests/test_configs.py checks).
# The model, data, evaluation and seed are the quick start's (_base_tiny_synthetic.py);
# the batch, warm-up and optimizer kernel are those the sweep of docs/results.md was
# measured with, one image scale throughout (no progressive resizing).
_base_ = './_base_tiny_synthetic.py'

max_iters = 800  # the knob (docs/results.md's mini sweep: 800 iterations of batch 8 a row)
num_val_points = 5  # validate at 20%, 40%, ..., 100%

val_interval = max_iters // num_val_points
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.8)], gamma=0.1),
]
train_dataloader = dict(batch_size=8)
# AdamW, multi-tensor (foreach) as in the measured runs; fused would differ in the last
# bits. (The sweep of docs/results.md predates the float32 attention softmax under
# autocast and the grouped optimizer: a rerun differs from it in the last bits, and over
# 800 iterations by about as much as another seed would.)
optim_wrapper = dict(optimizer=dict(foreach=True, fused=None))
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(
    # validation metrics logged at the training iteration (mmengine's default logs them at
    # the epoch, 0 for an iteration-based loop), so vis_data/scalars.json holds the curve
    logger=dict(log_metric_by_epoch=False),
    checkpoint=dict(interval=val_interval, max_keep_ckpts=1))
