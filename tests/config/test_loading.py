"""ddetr.config.load_config, the front door: --cfg-options with the top-level rule
(run keys set, data_root moves every split, a read-time variable or an unknown name
refused naming the keys to set), work_dir and launcher, the inference options."""
import os.path as osp

import pytest
from mmengine.config import Config

from ddetr.config import RUN_KEYS, load_config, parse_cfg_options
from ddetr.errors import ConfigError

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
CUSTOM = osp.join(ROOT, 'configs', 'custom', 'coco_custom_template.py')


def _data_roots(cfg):
    return [cfg[f'{split}_dataloader'].dataset.data_root for split in ('train', 'val', 'test')]


def test_data_root_reaches_every_dataloader_and_evaluator():
    cfg = load_config(QUICKSTART, ['data_root=/elsewhere/shapes/'])
    assert _data_roots(cfg) == ['/elsewhere/shapes/'] * 3
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator.ann_file == '/elsewhere/shapes/annotations/instances_val.json'
    assert cfg.data_root == '/elsewhere/shapes/'


def test_data_root_without_a_trailing_slash_joins_the_evaluator_path():
    cfg = load_config(QUICKSTART, ['data_root=/elsewhere'])
    assert cfg.val_evaluator.ann_file == '/elsewhere/annotations/instances_val.json'


def test_data_root_of_a_custom_data_config_reaches_every_split():
    cfg = load_config(CUSTOM, ['data_root=/mine/'])
    assert _data_roots(cfg) == ['/mine/'] * 3
    assert cfg.val_evaluator.ann_file == '/mine/annotations/val.json'


def test_data_root_no_dataloader_reads_is_refused(tmp_path):
    config = tmp_path / 'own_roots.py'
    config.write_text(f"""_base_ = {QUICKSTART!r}
train_dataloader = dict(dataset=dict(data_root='a/'))
val_dataloader = dict(dataset=dict(data_root='b/'))
test_dataloader = dict(dataset=dict(data_root='b/'))
val_evaluator = dict(ann_file='b/val.json')
test_evaluator = dict(ann_file='b/val.json')
""")
    with pytest.raises(ConfigError, match=r"data_root='/x/': no dataloader or evaluator .* "
                                          r"reads its data_root"):
        load_config(str(config), ['data_root=/x/'])


@pytest.mark.parametrize('option, places', [
    ('max_iters=100', 'train_cfg.max_iters'),
    ('num_classes=3', 'model.bbox_head.num_classes'),
    ('img_scale=(128,128)', 'train_dataloader.dataset.pipeline.2.scale'),
])
def test_a_variable_used_only_while_reading_is_refused_naming_where_it_went(option, places):
    with pytest.raises(ConfigError) as raised:
        load_config(QUICKSTART, [option])
    message = str(raised.value)
    name = option.split('=')[0]
    assert f'`{name}` is a variable of' in message and 'would change nothing' in message
    assert places in message
    assert 'train_pipeline' not in message  # another variable is no place to set it


def test_an_unknown_top_level_name_is_refused_with_the_nearest():
    with pytest.raises(ConfigError, match=r"no top-level key `lod_from`.*did you mean "
                                          r"`load_from`"):
        load_config(QUICKSTART, ['lod_from=x.pth'])


def test_run_keys_and_dotted_keys_are_set():
    cfg = load_config(QUICKSTART, ['load_from=w.pth', 'train_cfg.max_iters=7',
                                   'randomness.seed=3'])
    assert (cfg.load_from, cfg.train_cfg.max_iters, cfg.randomness.seed) == ('w.pth', 7, 3)
    assert {'model', 'train_dataloader', 'load_from', 'work_dir', 'data_root'} <= RUN_KEYS


def test_work_dir_and_launcher_only_for_runs(tmp_path):
    cfg = load_config(QUICKSTART, work_dir=str(tmp_path))
    assert (cfg.work_dir, cfg.launcher) == (str(tmp_path), 'none')
    default = load_config(QUICKSTART, launcher='none')
    assert default.work_dir == osp.join('work_dirs', 'ddetr_tiny_synthetic')
    assert 'launcher' not in load_config(QUICKSTART)


def test_inference_options_and_a_config_object_is_copied():
    base = Config.fromfile(osp.join(ROOT, 'configs', 'ddetr_r50.py'))
    cfg = load_config(base, num_classes=91, no_downloads=True)
    assert cfg.model.bbox_head.num_classes == 91 and cfg.model.backbone.init_cfg is None
    assert base.model.bbox_head.num_classes == 80  # the caller's config is untouched
    assert base.model.backbone.init_cfg is not None


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ConfigError, match='config nope.py does not exist'):
        load_config('nope.py')
    with pytest.raises(ConfigError, match='"max_iters" is not KEY=VALUE'):
        parse_cfg_options(['max_iters'])
    no_model = tmp_path / 'no_model.py'
    no_model.write_text('x = 1\n')
    with pytest.raises(ConfigError, match='has no `model`'):
        load_config(str(no_model))
