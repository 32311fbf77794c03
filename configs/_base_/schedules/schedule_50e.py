# The paper's schedule (Sec. 5): AdamW, lr 2e-4, weight decay 1e-4, betas (0.9, 0.999);
# lr x 0.1 for the backbone and for the linear projections predicting sampling offsets
# and reference points; gradient clipping at L2 norm 0.1; 50 epochs, lr x 0.1 at epoch 40.
optim_wrapper = dict(  # mmengine's OptimWrapper
    type='OptimWrapper',
    # foreach: all parameters in a few multi-tensor kernels (torch's default on GPUs; on CPU
    # it defaults to a Python loop over parameters); the same numbers either way
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4,
                   foreach=True),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    # mmengine's parameter-wise settings below, with the parameters that share settings
    # in one group (mmengine's default makes a group per parameter, each stepped in Python)
    constructor='GroupedOptimWrapperConstructor',
    paramwise_cfg=dict(  # matched as substrings of parameter names
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1),
        }))

max_epochs = 50
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(  # mmengine's MultiStepLR
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[40],
        gamma=0.1)
]

# lr 2e-4 is for a total batch of 32 (e.g. 16 GPUs x 2 images); other totals scale it
# linearly.
auto_scale_lr = dict(enable=True, base_batch_size=32)
