"""ddetr.config.build_errors: a misspelt or missing config key becomes a ConfigError that
names it (and the nearest key the class takes), from build_detector and from
tools/train.py, while other TypeErrors keep their traceback."""
import os
import os.path as osp
import subprocess
import sys

import pytest

from ddetr.apis import build_detector
from ddetr.config import explain_build_error, load_config
from ddetr.errors import ConfigError
from ddetr.setup_env import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')


def test_a_misspelt_key_is_named_with_the_nearest_accepted_one():
    from ddetr.models.layers.deformable_encoder import DeformableDetrTransformerEncoderLayer
    with pytest.raises(TypeError) as raised:
        DeformableDetrTransformerEncoderLayer(embed_dims=32, num_head=4)
    error = explain_build_error(raised.value)
    assert isinstance(error, ConfigError)
    assert "DeformableDetrTransformerEncoderLayer a key it does not take: 'num_head'" in str(error)
    assert "(did you mean 'num_heads'?)" in str(error)
    assert 'takes: ' in str(error) and 'embed_dims' in str(error)


def test_a_missing_key_is_named():
    class NeedsDepth:
        def __init__(self, depth):
            self.depth = depth

    with pytest.raises(TypeError) as raised:
        NeedsDepth()
    error = explain_build_error(raised.value)
    assert str(error) == "the config does not set 'depth' for NeedsDepth, which needs it"


def test_other_type_errors_are_left_alone():
    with pytest.raises(TypeError) as raised:
        len(3)
    assert explain_build_error(raised.value) is None


def test_build_detector_reports_a_misspelt_key_through_the_registry():
    cfg = load_config(QUICKSTART, ['model.decoder.layer_cfg.feedforward_channel=64'])
    with pytest.raises(ConfigError, match=r"'feedforward_channel' \(did you mean "
                                          r"'feedforward_channels'\?\)"):
        build_detector(cfg)


def test_train_tool_stops_in_one_line_on_a_misspelt_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', QUICKSTART, '--work-dir', str(tmp_path),
         '--cfg-options', 'model.encoder.layer_cfg.num_head=4'],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('train.py: error: the config gives '
                           'DeformableDetrTransformerEncoderLayer')
    assert "'num_head' (did you mean 'num_heads'?)" in last


def test_an_unregistered_type_is_named_with_the_nearest_registered_one():
    from ddetr.registry import MODELS
    register_all_modules()
    with pytest.raises(KeyError) as raised:
        MODELS.build(dict(type='DeformableDETRR'))
    error = explain_build_error(raised.value)
    assert isinstance(error, ConfigError)
    assert str(error) == ("the config names type 'DeformableDETRR', which is not in the model "
                          "registry (did you mean 'DeformableDETR'?)")
    with pytest.raises(KeyError) as raised:
        {}['some key']
    assert explain_build_error(raised.value) is None  # other KeyErrors keep their traceback


@pytest.mark.parametrize('option, expected', [
    ('optim_wrapper.optimizer.type=AdamWW', "type 'AdamWW', which is not in the optimizer "
                                            "registry (did you mean 'AdamW'?)"),
    ('optim_wrapper.constructor=GroupedOptimWrapperConstructr',
     "(did you mean 'GroupedOptimWrapperConstructor'?)"),
])
def test_train_tool_stops_in_one_line_on_a_misspelt_type(tmp_path, option, expected):
    """Types built lazily by the Runner's train() (optimizer, its constructor) too."""
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', QUICKSTART, '--work-dir', str(tmp_path),
         '--cfg-options', option],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('train.py: error: the config names type') and expected in last
