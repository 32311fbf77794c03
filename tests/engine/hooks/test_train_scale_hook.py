"""TrainScaleScheduleHook: which scale the training pipeline's Resize has at each iteration."""
import logging
from types import SimpleNamespace

import pytest
from mmcv.transforms import Compose, Resize
from torch.utils.data import DataLoader, Dataset

from ddetr.engine.hooks.preflight_hook import PreflightError
from ddetr.engine.hooks.train_scale_hook import TrainScaleScheduleHook
from ddetr.errors import ConfigError


class PipelineDataset(Dataset):
    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return index


def make_runner(transforms, num_workers=0, start_iter=0, max_iters=6):
    loader = DataLoader(PipelineDataset(Compose(transforms)), num_workers=num_workers)
    return SimpleNamespace(train_dataloader=loader, iter=start_iter, max_iters=max_iters,
                           logger=logging.getLogger('test_train_scale_hook'))


def run_iterations(hook, runner, num_iters):
    """The Resize scale each iteration's batch is loaded with, as mmengine's loop orders
    loading and hooks (the batch is loaded before that iteration's hooks run)."""
    resize = runner.train_dataloader.dataset.pipeline.transforms[0]
    hook.before_train(runner)
    scales = []
    for _ in range(num_iters):
        scales.append(resize.scale)
        hook.after_train_iter(runner, batch_idx=runner.iter)
        runner.iter += 1
    hook.after_train(runner)
    return scales


def test_the_switch_follows_max_iters():
    """A schedule shortened on the command line switches at the same fraction of it."""
    runner = make_runner([Resize(scale=(256, 256))], max_iters=10)
    scales = run_iterations(TrainScaleScheduleHook(ratios=[0.75], milestones=[0.3]),
                            runner, 10)
    assert scales == [(192, 192)] * 3 + [(256, 256)] * 7


def test_early_scale_until_the_switch_then_the_configs():
    runner = make_runner([Resize(scale=(256, 256), keep_ratio=True)])
    hook = TrainScaleScheduleHook(ratios=[0.75], milestones=[0.5])
    scales = run_iterations(hook, runner, 6)
    assert scales == [(192, 192)] * 3 + [(256, 256)] * 3
    assert runner.train_dataloader.dataset.pipeline.transforms[0].scale == (256, 256)


def test_stages_in_turn_then_the_configs_scale():
    runner = make_runner([Resize(scale=(256, 256))], max_iters=8)
    hook = TrainScaleScheduleHook(ratios=[0.625, 0.75], milestones=[0.5, 0.75])
    scales = run_iterations(hook, runner, 8)
    assert scales == [(160, 160)] * 4 + [(192, 192)] * 2 + [(256, 256)] * 2
    assert hook.ends == [4, 6]


def test_a_resumed_run_in_a_middle_stage_gets_its_scale():
    runner = make_runner([Resize(scale=(256, 256))], start_iter=5, max_iters=8)
    hook = TrainScaleScheduleHook(ratios=[0.625, 0.75], milestones=[0.5, 0.75])
    assert run_iterations(hook, runner, 3) == [(192, 192), (256, 256), (256, 256)]


def test_a_resumed_run_starts_in_the_phase_of_its_iteration():
    early = make_runner([Resize(scale=(256, 256))], start_iter=1)
    assert run_iterations(TrainScaleScheduleHook(ratios=[0.5], milestones=[0.5]),
                          early, 3) == [(128, 128), (128, 128), (256, 256)]
    late = make_runner([Resize(scale=(256, 256))], start_iter=5)
    assert run_iterations(TrainScaleScheduleHook(ratios=[0.5], milestones=[0.5]),
                          late, 2) == [(256, 256)] * 2


def test_every_resize_of_the_pipeline_is_scheduled():
    runner = make_runner([Resize(scale=(256, 256)), Resize(scale=(300, 200))])
    hook = TrainScaleScheduleHook(ratios=[0.25], milestones=[0.2])
    hook.before_train(runner)
    first, second = runner.train_dataloader.dataset.pipeline.transforms
    assert (first.scale, second.scale) == ((64, 64), (75, 50))
    hook.after_train_iter(runner, batch_idx=0)
    assert (first.scale, second.scale) == ((256, 256), (300, 200))


def test_loader_workers_are_refused_with_the_key_to_change():
    runner = make_runner([Resize(scale=(256, 256))], num_workers=2)
    with pytest.raises(PreflightError, match='train_dataloader.num_workers=0'):
        TrainScaleScheduleHook(ratios=[0.75], milestones=[0.5]).before_train(runner)


def test_a_resize_by_factor_is_refused():
    runner = make_runner([Resize(scale_factor=0.5)])
    with pytest.raises(PreflightError, match='scale_factor'):
        TrainScaleScheduleHook(ratios=[0.75], milestones=[0.5]).before_train(runner)


def test_a_pipeline_without_resize_is_refused():
    runner = make_runner([])
    with pytest.raises(PreflightError, match='no Resize'):
        TrainScaleScheduleHook(ratios=[0.75], milestones=[0.5]).before_train(runner)


@pytest.mark.parametrize('kwargs', [dict(ratios=[0.75], milestones=[1.5]),
                                    dict(ratios=[0], milestones=[0.5]),
                                    dict(ratios=[1.5], milestones=[0.5]),
                                    dict(ratios=[0.5, 0.75], milestones=[0.5]),
                                    dict(ratios=[], milestones=[]),
                                    dict(ratios=[0.5, 0.75], milestones=[0.6, 0.3])])
def test_bad_arguments_are_named(kwargs):
    with pytest.raises(ConfigError, match='TrainScaleScheduleHook'):
        TrainScaleScheduleHook(**kwargs)
