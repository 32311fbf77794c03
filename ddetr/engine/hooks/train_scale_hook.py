"""Smaller training images first, then the config's own scale (progressive resizing)."""
from typing import List, Sequence

from mmengine.hooks import Hook

from ddetr.errors import ConfigError, PreflightError
from ddetr.registry import HOOKS


@HOOKS.register_module()
class TrainScaleScheduleHook(Hook):
    """Trains the early part of the training with every ``Resize`` of the training pipeline
    at a fraction of its scale, in stages, then at the scale the config gives it.

    Stage ``i`` resizes to ``ratios[i]`` times the configured scale and ends at
    ``milestones[i]``, a fraction of the training's iterations (as the learning rate's
    ``MultiStepLR`` milestones, but relative); after the last milestone the configured scale
    holds. ``ratios=[0.75], milestones=[0.5]``: the first half at 0.75x, the second at 1x.

    Early iterations on smaller images cost less (the backbone, the encoder's tokens and the
    op all scale with the pixels) while the model still learns the coarse task; the last
    part trains at the scale the model is tested at. The paper's training follows DETR's,
    which resizes each image to one of several sizes (shorter side 480-800); this keeps one
    size at a time, so the batches of a stage pad to about the same size.

    Both are relative, so a config that inherits this one and changes the image scale or
    the schedule (``--cfg-options train_cfg.max_iters=...``) gets the same proportions; the
    log says which scales and iterations were used. The pipeline is changed in the training
    process, so the loader must load there (``train_dataloader.num_workers=0``): worker
    processes keep their own copy of it. A resumed run starts in the stage of its iteration.

    Args:
        ratios (Sequence[float]): each early stage's ``Resize`` scale as a fraction of the
            configured one, in (0, 1].
        milestones (Sequence[float]): where each early stage ends, as a fraction of the
            training's iterations: increasing, in [0, 1], one per ratio.
    """
    priority = 'NORMAL'

    def __init__(self, *, ratios: Sequence[float], milestones: Sequence[float]) -> None:
        ratios, milestones = [float(r) for r in ratios], [float(m) for m in milestones]
        if not ratios or len(ratios) != len(milestones):
            raise ConfigError(f'TrainScaleScheduleHook: one milestone per ratio, got ratios '
                              f'{ratios} and milestones {milestones}')
        if not all(0 < r <= 1 for r in ratios):
            raise ConfigError(f'TrainScaleScheduleHook: ratios must be in (0, 1], got {ratios}')
        if not all(0 <= m <= 1 for m in milestones) or milestones != sorted(milestones):
            raise ConfigError(f'TrainScaleScheduleHook: milestones must increase within '
                              f'[0, 1], got {milestones}')
        self.ratios = ratios + [1.0]  # the configured scale after the last milestone
        self.milestones = milestones
        self.ends: List[int] = []  # the first iteration of each later stage (before_train)
        self._resizes: List = []
        self._scales: List = []

    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        if loader.num_workers > 0:
            raise PreflightError(
                f'TrainScaleScheduleHook changes the training pipeline in this process, but '
                f'train_dataloader.num_workers={loader.num_workers} loads in worker processes '
                f'that keep their own copy: set train_dataloader.num_workers=0')
        pipeline = getattr(loader.dataset, 'pipeline', None)
        self._resizes = [t for t in getattr(pipeline, 'transforms', [])
                         if type(t).__name__ == 'Resize']
        if not self._resizes:
            raise PreflightError('TrainScaleScheduleHook: the training pipeline '
                             '(train_dataloader.dataset.pipeline) has no Resize to schedule')
        if any(t.scale is None for t in self._resizes):
            raise PreflightError('TrainScaleScheduleHook: a Resize of the training pipeline has '
                             'no scale (it uses scale_factor); give it a scale')
        self._scales = [t.scale for t in self._resizes]
        self.ends = [round(runner.max_iters * m) for m in self.milestones]
        plan = ', '.join(f'{self._stage_scales(i)[0]} until iteration {end}'
                         for i, end in enumerate(self.ends))
        runner.logger.info(f'TrainScaleScheduleHook: training images at scale {plan}, then '
                           f'{self._scales[0]}')
        self._set_stage(self._stage_at(runner.iter))  # a resumed run's stage

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        # the loop loads the next batch before the next iteration's hooks run, so a stage
        # starts after the last iteration of the one before
        next_iter = runner.iter + 1
        if next_iter in self.ends:
            stage = self._stage_at(next_iter)
            self._set_stage(stage)
            runner.logger.info(f'TrainScaleScheduleHook: training images at scale '
                               f'{self._stage_scales(stage)[0]} from iteration {next_iter}')

    def after_train(self, runner) -> None:
        self._set_stage(len(self.ends))  # leave the pipeline as found

    def _stage_at(self, iteration: int) -> int:
        return sum(end <= iteration for end in self.ends)

    def _stage_scales(self, stage: int) -> List[tuple]:
        ratio = self.ratios[stage]
        return [tuple(max(1, round(size * ratio)) for size in scale) for scale in self._scales]

    def _set_stage(self, stage: int) -> None:
        for transform, scale in zip(self._resizes, self._stage_scales(stage)):
            transform.scale = scale
