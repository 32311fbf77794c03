"""Stop training at the first non-finite loss, saying where and which terms."""
import math

import torch
from mmengine.hooks import Hook

from ddetr.registry import HOOKS


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raises ``FloatingPointError`` naming the iteration and every loss term when the
    total loss of a training iteration is NaN or infinite.

    It runs before the checkpoint hook (priority ``VERY_HIGH``), so no checkpoint of the
    broken state is written and the last good one stays available for ``--resume``.
    """
    priority = 'VERY_HIGH'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not outputs or 'loss' not in outputs:
            return
        values = {k: float(v.detach() if isinstance(v, torch.Tensor) else v)
                  for k, v in outputs.items() if k.startswith('loss')}
        if all(math.isfinite(v) for v in values.values()):
            return
        terms = ', '.join(f'{k}={v:.4g}' for k, v in values.items())
        raise FloatingPointError(
            f'non-finite loss at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): '
            f'{terms}. Training stopped; lower the learning rate or check the data, then '
            f'resume from the last checkpoint in {runner.work_dir}.')
