"""Smaller training images first, then the config's own scale (progressive resizing)."""
from typing import List

from mmengine.hooks import Hook

from ddetr.registry import HOOKS


@HOOKS.register_module()
class TrainScaleScheduleHook(Hook):
    """Trains the first ``early_fraction`` of the training's iterations with every
    ``Resize`` of the training pipeline at ``early_ratio`` times its scale, then at the scale
    the config gives it.

    Early iterations on smaller images cost less (the backbone, the encoder's tokens and the
    op all scale with the pixels) while the model still learns the coarse task; the last
    part trains at the scale the model is tested at. The paper's training follows DETR's,
    which resizes each image to one of several sizes (shorter side 480-800); this keeps one
    size at a time, so the batches of a phase pad to about the same size.

    Both are relative, so a config that inherits this one and changes the image scale or
    the schedule (``--cfg-options train_cfg.max_iters=...``) gets the same proportions; the
    log says which scales and iterations were used. The pipeline is changed
    in the training process, so the loader must load there
    (``train_dataloader.num_workers=0``): worker processes keep their own copy of it. A
    resumed run starts in the phase of its iteration.

    Args:
        early_ratio (float): the early iterations' ``Resize`` scale as a fraction of the
            configured one, in (0, 1].
        early_fraction (float): their share of the iterations, in [0, 1].
    """
    priority = 'NORMAL'

    def __init__(self, *, early_ratio: float, early_fraction: float) -> None:
        if not 0 < early_ratio <= 1:
            raise ValueError(f'TrainScaleScheduleHook: early_ratio must be in (0, 1], '
                             f'got {early_ratio!r}')
        if not 0 <= early_fraction <= 1:
            raise ValueError(f'TrainScaleScheduleHook: early_fraction must be in [0, 1], '
                             f'got {early_fraction!r}')
        self.early_ratio = float(early_ratio)
        self.early_fraction = float(early_fraction)
        self.switch_iter = 0  # the first iteration at the config's scale (before_train)
        self._resizes: List = []
        self._scales: List = []

    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        if loader.num_workers > 0:
            raise ValueError(
                f'TrainScaleScheduleHook changes the training pipeline in this process, but '
                f'train_dataloader.num_workers={loader.num_workers} loads in worker processes '
                f'that keep their own copy: set train_dataloader.num_workers=0')
        pipeline = getattr(loader.dataset, 'pipeline', None)
        self._resizes = [t for t in getattr(pipeline, 'transforms', [])
                         if type(t).__name__ == 'Resize']
        if not self._resizes:
            raise ValueError('TrainScaleScheduleHook: the training pipeline '
                             '(train_dataloader.dataset.pipeline) has no Resize to schedule')
        if any(t.scale is None for t in self._resizes):
            raise ValueError('TrainScaleScheduleHook: a Resize of the training pipeline has '
                             'no scale (it uses scale_factor); give it a scale')
        self._scales = [t.scale for t in self._resizes]
        early = [tuple(max(1, round(size * self.early_ratio)) for size in scale)
                 for scale in self._scales]
        self.switch_iter = round(runner.max_iters * self.early_fraction)
        if runner.iter < self.switch_iter:
            for transform, scale in zip(self._resizes, early):
                transform.scale = scale
            runner.logger.info(f'TrainScaleScheduleHook: training images at scale '
                               f'{early[0]} until iteration {self.switch_iter}, then '
                               f'{self._scales[0]}')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        # the loop loads the next batch before the next iteration's hooks run, so the
        # switch happens after the last early iteration
        if runner.iter + 1 == self.switch_iter:
            for transform, scale in zip(self._resizes, self._scales):
                transform.scale = scale
            runner.logger.info(f'TrainScaleScheduleHook: training images at scale '
                               f'{self._scales[0]} from iteration {self.switch_iter}')

    def after_train(self, runner) -> None:
        for transform, scale in zip(self._resizes, self._scales):  # leave the pipeline as found
            transform.scale = scale
