"""Every config builds its model (full size, no pretrained weights); the Table 1 models
have exactly the original release's parameter counts; the variants change only what
differs; the schedule and augmentation are the paper's."""
import copy
import glob
import os.path as osp
import runpy

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from ddetr.models import MultiScaleDeformableAttention
from ddetr.registry import MODELS
from ddetr.setup_env import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p.split(osp.sep))
TABLE1 = {
    'ddetr_r50.py': 40_069_665,
    'ddetr_r50_refine.py': 40_849_660,
    'ddetr_r50_refine_twostage.py': 41_181_529,
}


def config_path(name):
    return osp.join(ROOT, 'configs', name)


def build(path, num_classes=None):
    register_all_modules()
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None  # never download
    if num_classes is not None:
        cfg.model.bbox_head.num_classes = num_classes
    return cfg, MODELS.build(cfg.model)


def count_parameters(model):
    """As the original release counts: each shared tensor once, without the backbone's
    BatchNorm affine weights (FrozenBatchNorm2d buffers there)."""
    norms = [m for m in model.backbone.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    frozen = {id(p) for m in norms for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in model.parameters() if id(p) not in frozen)


def own_settings(path):
    """The dicts a config file itself defines (without its _base_)."""
    return {k: v for k, v in runpy.run_path(path).items() if not k.startswith('__')}


def test_configs_exist():
    names = {osp.relpath(p, osp.join(ROOT, 'configs')) for p in CONFIGS}
    assert set(TABLE1) <= names
    assert sum(n.startswith('table2' + osp.sep) for n in names) == 6
    assert sum(n.startswith('table3' + osp.sep) for n in names) == 4


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, ROOT))
def test_config_builds(path):
    cfg, model = build(path)
    assert cfg.default_scope == 'ddetr'
    detr = osp.relpath(path, ROOT).startswith(osp.join('configs', 'quickstart', 'detr', ''))
    assert type(model).__name__ == ('DETR' if detr else 'DeformableDETR')
    if 'tta_model' in cfg:
        tta = MODELS.build(dict(cfg.tta_model, module=model))
        assert type(tta).__name__ == 'DetTTAModel'


@pytest.mark.parametrize('name', list(TABLE1))
def test_table1_parameter_counts(name):
    _, model = build(config_path(name), num_classes=91)
    assert count_parameters(model) == TABLE1[name]


def test_variants_change_only_what_differs():
    assert own_settings(config_path('ddetr_r50_refine.py'))['model'] == dict(with_box_refine=True)
    assert own_settings(config_path('ddetr_r50_refine_twostage.py'))['model'] == dict(
        as_two_stage=True)
    switches = {'table2/ddetr_r50_single_scale_k1.py': dict(
                    num_feature_levels=1, num_points=1, multi_scale_attention=False),
                'table2/ddetr_r50_ms_inputs_k1.py': dict(num_points=1,
                                                         multi_scale_attention=False),
                'table2/ddetr_r50_ms_inputs_k4.py': dict(multi_scale_attention=False),
                'table2/ddetr_r50_fpn.py': dict(neck=dict(type='FPN',
                                                          add_extra_convs='on_input')),
                'table2/ddetr_r50_bifpn.py': dict(neck=dict(type='BiFPN', num_repeats=3))}
    for name, model in switches.items():
        assert own_settings(config_path(name))['model'] == model, name
    assert 'model' not in own_settings(config_path('table2/ddetr_r50_ms_attention_k4.py'))


def test_table2_switches_reach_the_model():
    expected = {  # (levels, points, multi-scale attention, neck)
        'ddetr_r50_single_scale_k1.py': (1, 1, False, 'MultiScaleChannelMapper'),
        'ddetr_r50_ms_inputs_k1.py': (4, 1, False, 'MultiScaleChannelMapper'),
        'ddetr_r50_ms_inputs_k4.py': (4, 4, False, 'MultiScaleChannelMapper'),
        'ddetr_r50_ms_attention_k4.py': (4, 4, True, 'MultiScaleChannelMapper'),
        'ddetr_r50_fpn.py': (4, 4, True, 'FPN'),
        'ddetr_r50_bifpn.py': (4, 4, True, 'BiFPN'),
    }
    for name, (levels, points, multi_scale, neck) in expected.items():
        _, model = build(config_path(osp.join('table2', name)))
        attentions = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
        assert len(attentions) == 12
        assert {(m.num_levels, m.num_points, m.multi_scale) for m in attentions} == {
            (levels, points, multi_scale)}, name
        assert type(model.neck).__name__ == neck
        with torch.no_grad():
            feats = model.extract_feat(torch.randn(1, 3, 64, 96))
        assert len(feats) == levels and all(f.shape[1] == 256 for f in feats)
        if levels == 1:
            assert feats[0].shape[-2:] == (2, 3)  # C5


def test_table3_backbones():
    _, r101 = build(config_path('table3/ddetr_r101_refine_twostage.py'))
    assert r101.backbone.depth == 101 and r101.with_box_refine and r101.as_two_stage
    cfg, x101 = build(config_path('table3/ddetr_x101_32x4d_refine_twostage.py'))
    assert type(x101.backbone).__name__ == 'ResNeXt'
    assert (x101.backbone.groups, x101.backbone.base_width) == (32, 4)
    cfg, dcn = build(config_path('table3/ddetr_x101_32x4d_dcn_refine_twostage.py'))
    assert cfg.model.backbone.dcn.type == 'DCNv2'
    for stage, has_dcn in zip(range(1, 5), (False, True, True, True)):
        convs = [type(m.conv2).__name__ for m in getattr(dcn.backbone, f'layer{stage}')]
        assert all((name == 'ModulatedDeformConv2dPack') == has_dcn for name in convs), stage
    with torch.no_grad():  # mmcv's DCNv2 runs on CPU too
        feats = dcn.eval().backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [512, 1024, 2048]
    tta = Config.fromfile(config_path('table3/ddetr_x101_32x4d_dcn_refine_twostage_tta.py'))
    aug = tta.tta_pipeline[1]['transforms']
    assert len(aug[0]) == 3 and [t['prob'] for t in aug[1]] == [1.0, 0.0]


def test_schedule_and_augmentation_follow_the_paper():
    cfg, model = build(config_path('ddetr_r50_refine.py'))
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 2e-4, 1e-4)
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=0.1, norm_type=2)
    assert cfg.train_cfg.max_epochs == 50
    assert cfg.param_scheduler[0].milestones == [40] and cfg.param_scheduler[0].gamma == 0.1
    assert cfg.auto_scale_lr.base_batch_size == 32
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            lrs[id(p)] = group['lr']
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        slow = name.startswith('backbone') or 'sampling_offsets' in name or \
            'reference_points' in name
        assert lrs[id(p)] == pytest.approx(2e-5 if slow else 2e-4), name
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [t.type for t in pipeline] == ['LoadImageFromFileSafe', 'LoadAnnotations', 'RandomFlip',
                                          'RandomChoice', 'PackDetInputs']
    resize, crop_branch = pipeline[3].transforms
    assert resize[0].scales == [(s, 1333) for s in range(480, 801, 32)]
    assert [t.type for t in crop_branch] == ['RandomChoiceResize', 'RandomCrop',
                                             'RandomChoiceResize']
    assert [s[0] for s in crop_branch[0].scales] == [400, 500, 600]
    assert crop_branch[1].crop_size == (384, 600) and crop_branch[2] == resize[0]
    assert cfg.model.data_preprocessor.pad_size_divisor == 1
    assert cfg.model.backbone.frozen_stages == 1 and cfg.model.backbone.norm_eval


def test_quickstart_replaces_the_coco_settings_it_inherits():
    """The quick start inherits Table 1's two-stage model; the pretrained, partly frozen
    backbone at lr x 0.1 and the COCO data and epochs of that config must not leak in."""
    cfg, model = build(config_path('quickstart/ddetr_tiny_synthetic.py'))
    base = Config.fromfile(config_path('ddetr_r50_refine_twostage.py'))
    assert cfg.model.bbox_head.loss_cls == base.model.bbox_head.loss_cls
    assert cfg.model.train_cfg == base.model.train_cfg
    assert model.with_box_refine and model.as_two_stage
    assert cfg.model.backbone.frozen_stages == -1 and not cfg.model.backbone.norm_eval
    assert all(p.requires_grad for p in model.backbone.parameters())
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = {id(p): group['lr'] for group in wrapper.optimizer.param_groups
           for p in group['params']}
    for name, p in model.named_parameters():
        slow = 'sampling_offsets' in name or 'reference_points' in name
        assert lrs[id(p)] == pytest.approx(4e-5 if slow else 4e-4), name
    assert 'batch_sampler' not in cfg.train_dataloader
    assert 'backend_args' not in cfg.train_dataloader.dataset
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=2800, val_interval=2800)
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.param_scheduler[1].milestones == [int(2800 * 0.75)]
    # progressive resizing: half at 160 px, a quarter at 192, then the test scale; the
    # loader in the training process, where the hook changes the pipeline
    assert cfg.custom_hooks == [dict(type='TrainScaleScheduleHook', ratios=[0.625, 0.75],
                                     milestones=[0.5, 0.75])]
    assert cfg.train_dataloader.num_workers == 0
    assert [t.scale for t in cfg.train_pipeline if t.type == 'Resize'] == [(256, 256)]
    # one fused kernel per parameter (the default would loop over them in Python)
    assert wrapper.optimizer.defaults['fused'] and not wrapper.optimizer.defaults['foreach']
    # one group per setting (lr, lr x 0.1), not one per parameter
    assert len(wrapper.optimizer.param_groups) == 2


def test_paper_schedule_steps_all_parameters_at_once():
    """foreach=True: torch's multi-tensor AdamW everywhere (its default only on GPUs)."""
    cfg, model = build(config_path('ddetr_r50.py'))
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert wrapper.optimizer.defaults['foreach'] is True
    # lr and lr x 0.1 (backbone, sampling offsets, reference points; the frozen stem is
    # left out), not one group per parameter
    assert cfg.optim_wrapper.constructor == 'GroupedOptimWrapperConstructor'
    assert len(wrapper.optimizer.param_groups) == 2


# ---------------------------------------------------------------- the mini sweep (issue 9)
QUICKSTART = config_path('quickstart/ddetr_tiny_synthetic.py')
MINI_SCHEDULE = config_path('quickstart/_mini_sweep_schedule.py')
MINI_ROWS = sorted(glob.glob(config_path('quickstart/table1/*.py')) +
                   glob.glob(config_path('quickstart/table2/*.py')) +
                   glob.glob(config_path('quickstart/detr/*.py')))
SHARED = ('train_cfg', 'param_scheduler', 'randomness', 'train_dataloader', 'val_dataloader',
          'test_dataloader', 'val_evaluator', 'test_evaluator', 'optim_wrapper',
          'default_hooks', 'custom_hooks', 'env_cfg', 'auto_scale_lr')


def test_mini_sweep_rows_share_seed_data_schedule_and_evaluation():
    assert [osp.relpath(p, config_path('quickstart')) for p in MINI_ROWS] == [
        'detr/detr_tiny.py', 'table1/ddetr_tiny.py', 'table1/ddetr_tiny_refine.py',
        'table1/ddetr_tiny_refine_twostage.py', 'table2/ddetr_tiny_bifpn.py',
        'table2/ddetr_tiny_fpn.py', 'table2/ddetr_tiny_ms_attention_k4.py',
        'table2/ddetr_tiny_ms_inputs_k1.py', 'table2/ddetr_tiny_ms_inputs_k4.py',
        'table2/ddetr_tiny_single_scale_k1.py']
    knob = Config.fromfile(MINI_SCHEDULE)
    quickstart = Config.fromfile(QUICKSTART)
    # the knob: validation every 20 % (curves), LR drop at 80 %, a checkpoint per validation
    assert knob.max_iters == knob.train_cfg.max_iters
    assert knob.param_scheduler[1].end == knob.max_iters
    assert knob.train_cfg.val_interval * 5 == knob.max_iters
    assert knob.param_scheduler[1].milestones == [int(knob.max_iters * 0.8)]
    assert knob.default_hooks.checkpoint.interval == knob.train_cfg.val_interval
    assert knob.default_hooks.logger.log_metric_by_epoch is False
    # what the sweep of docs/results.md was measured with: batch 8, lr 4e-4, 100 warm-up
    # iterations, torch's per-parameter AdamW numbers (foreach gives the same bits)
    assert knob.train_dataloader.batch_size == 8
    assert knob.optim_wrapper.optimizer.lr == 4e-4
    assert knob.optim_wrapper.optimizer.foreach is True and not knob.optim_wrapper.optimizer.fused
    assert knob.param_scheduler[0].end == 100
    assert not knob.get('custom_hooks')  # one image scale throughout, as measured
    for key in SHARED:
        if key not in ('train_cfg', 'param_scheduler', 'default_hooks', 'custom_hooks',
                       'train_dataloader', 'optim_wrapper'):
            assert knob.get(key) == quickstart.get(key), key
    for key in ('train_dataloader', 'optim_wrapper'):  # all but the pinned values
        pinned, own = copy.deepcopy(knob[key]), copy.deepcopy(quickstart[key])
        for cfg_dict in (pinned, own):
            cfg_dict.pop('batch_size', None)
            for name in ('lr', 'foreach', 'fused'):
                cfg_dict.get('optimizer', {}).pop(name, None)
        assert pinned == own, key
    for path in MINI_ROWS:
        cfg = Config.fromfile(path)
        for key in SHARED:
            assert cfg.get(key) == knob.get(key), (path, key)
        own = own_settings(path)
        assert not set(own) & set(SHARED) and 'max_iters' not in own, path


def test_quickstart_and_mini_sweep_share_a_frozen_base_and_set_only_their_schedules():
    """Model, data and evaluation live once, in _base_tiny_synthetic.py; the quick start
    and the mini sweep's schedule each set only what a schedule is."""
    schedule_keys = {'_base_', 'max_iters', 'lr_drop', 'num_val_points', 'val_interval',
                     'train_dataloader', 'optim_wrapper', 'param_scheduler', 'train_cfg',
                     'custom_hooks', 'default_hooks'}
    for path in (QUICKSTART, MINI_SCHEDULE):
        own = own_settings(path)
        assert own['_base_'] == './_base_tiny_synthetic.py', path
        assert set(own) <= schedule_keys, (path, set(own) - schedule_keys)
        assert set(own['train_dataloader']) == {'batch_size'}, path
        assert set(own['optim_wrapper']) == {'optimizer'}, path
        assert set(own['optim_wrapper']['optimizer']) == {'foreach', 'fused'}, path
    base = Config.fromfile(config_path('quickstart/_base_tiny_synthetic.py'))
    assert 'batch_size' not in base.train_dataloader and 'max_iters' not in base.train_cfg


def _plain_mini_model():
    return Config.fromfile(config_path('quickstart/table1/ddetr_tiny.py')).model


def test_mini_table1_rows_are_the_quickstart_model_without_and_with_its_variants():
    quickstart = Config.fromfile(QUICKSTART).model
    plain = _plain_mini_model()
    assert not plain.with_box_refine and not plain.as_two_stage
    assert dict(plain, with_box_refine=True, as_two_stage=True) == quickstart
    refine = Config.fromfile(config_path('quickstart/table1/ddetr_tiny_refine.py')).model
    assert refine == dict(plain, with_box_refine=True)
    two = Config.fromfile(config_path('quickstart/table1/ddetr_tiny_refine_twostage.py'))
    assert two.model == quickstart


@pytest.mark.parametrize('row', ['single_scale_k1', 'ms_inputs_k1', 'ms_inputs_k4',
                                 'ms_attention_k4', 'fpn', 'bifpn'])
def test_mini_table2_rows_change_what_the_full_scale_rows_change(row):
    """Each miniature row sets exactly the switches of its full-scale configs/table2 row,
    on the plain Deformable DETR (as the full-scale rows do on ddetr_r50.py)."""
    full = own_settings(config_path(f'table2/ddetr_r50_{row}.py'))
    mini_path = config_path(f'quickstart/table2/ddetr_tiny_{row}.py')
    mini = own_settings(mini_path)
    assert mini.get('model') == full.get('model')
    assert mini['_base_'] == '../table1/ddetr_tiny.py'
    cfg = Config.fromfile(mini_path)
    expected = Config(dict(model=_plain_mini_model()))
    expected.merge_from_dict(dict(model=full.get('model') or {}))
    assert cfg.model == expected.model


def test_mini_detr_is_mmdets_detr_at_the_same_sizes():
    register_all_modules()
    cfg = Config.fromfile(config_path('quickstart/detr/detr_tiny.py'))
    ddetr = Config.fromfile(QUICKSTART).model
    detr = cfg.model
    assert detr._scope_ == 'mmdet' and detr.type == 'DETR'
    assert detr.num_queries == ddetr.num_queries
    assert detr.data_preprocessor == ddetr.data_preprocessor
    for key in ('depth', 'base_channels', 'frozen_stages', 'norm_cfg', 'norm_eval', 'init_cfg'):
        assert detr.backbone[key] == ddetr.backbone[key], key
    assert detr.backbone.out_indices == (3, )  # DETR: C5 only
    assert detr.neck.in_channels == ddetr.neck.in_channels[-1:]
    assert detr.bbox_head.num_classes == ddetr.bbox_head.num_classes
    assert detr.bbox_head.embed_dims == detr.neck.out_channels == ddetr.bbox_head.embed_dims
    for part in ('encoder', 'decoder'):
        ours, theirs = ddetr[part], detr[part]
        assert theirs.num_layers == ours.num_layers
        assert theirs.layer_cfg.self_attn_cfg.num_heads == ours.layer_cfg.num_heads
        assert theirs.layer_cfg.self_attn_cfg.attn_drop == ours.layer_cfg.dropout
        assert theirs.layer_cfg.ffn_cfg.feedforward_channels == \
            ours.layer_cfg.feedforward_channels
    model = MODELS.build(detr)
    import mmdet.models
    assert type(model) is mmdet.models.DETR
    assert type(model.bbox_head) is mmdet.models.DETRHead
    assert model.bbox_head.num_classes == 6 and model.num_queries == 50


TRAIN_TWO_ITERS = r'''
import json, sys
from mmengine.config import Config
from mmengine.runner import Runner
from ddetr.setup_env import register_all_modules
register_all_modules(init_scope=False)
data_root, work, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
synthetic = dict(num_train=4, num_val=2, seed=1, min_side=64, max_side=96, max_objects=3)
for path in paths:
    cfg = Config.fromfile(path)
    name = path.split('/')[-1][:-3]
    cfg.merge_from_dict({
        'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': data_root,
        'train_dataloader.dataset.synthetic': synthetic,
        'train_cfg.max_iters': 2, 'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint.interval': 1000,
        'visualizer.name': 'vis_' + name,
        'visualizer.vis_backends': [dict(type='LocalVisBackend')]})
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.work_dir = f'{work}/{name}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    print('TRAINED', json.dumps(dict(name=name, iter=runner.iter,
                                     model=type(runner.model).__name__)), flush=True)
'''


def test_mini_sweep_configs_train_two_iterations(tmp_path):
    """Every miniature row (its real model, optimizer and schedule) builds and trains 2
    iterations, all in one process on a few tiny generated images."""
    import json
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, '-c', TRAIN_TWO_ITERS, str(tmp_path / 'data') + '/',
         str(tmp_path / 'work')] + MINI_ROWS, cwd=ROOT, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    done = [json.loads(line.split(' ', 1)[1]) for line in proc.stdout.splitlines()
            if line.startswith('TRAINED ')]
    assert [d['name'] for d in done] == [osp.basename(p)[:-3] for p in MINI_ROWS]
    assert all(d['iter'] == 2 for d in done)
    assert {d['model'] for d in done} == {'DETR', 'DeformableDETR'}
    for d in done:  # both iterations logged a finite loss
        (scalars,) = glob.glob(str(tmp_path / 'work' / d['name'] / '*' / 'vis_data' /
                                   'scalars.json'))
        losses = [json.loads(line)['loss'] for line in open(scalars)]
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), d['name']
