"""A crafted checkpoint (its pickle runs code) is refused by every way ddetr loads one:
tools/test.py, tools/demo.py, ddetr.apis.init_detector and training's load_from, and the
code never runs."""
import os

import pytest

from test_train_test import QUICKSTART, run, write_config


def assert_refused(proc, marker):
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert 'makedirs' in log and '--trust-checkpoint' in log, log[-3000:]
    assert 'Traceback' not in log, log[-3000:]
    assert not marker.exists()


def test_test_tool_refuses_a_crafted_checkpoint(tmp_path, crafted_checkpoint):
    path, marker = crafted_checkpoint
    config = write_config(tmp_path)
    proc = run(['tools/test.py', config, path, '--work-dir', str(tmp_path / 'w')], check=False)
    assert_refused(proc, marker)


def test_demo_refuses_a_crafted_checkpoint(tmp_path, crafted_checkpoint):
    path, marker = crafted_checkpoint
    image = tmp_path / 'img.png'
    import cv2
    import numpy as np
    cv2.imwrite(str(image), np.full((64, 80, 3), 127, np.uint8))
    proc = run(['tools/demo.py', str(image), QUICKSTART, path, '--out',
                str(tmp_path / 'out.png')], check=False)
    assert_refused(proc, marker)


def test_init_detector_refuses_a_crafted_checkpoint(crafted_checkpoint):
    from ddetr.apis import init_detector
    from ddetr.errors import CheckpointError
    path, marker = crafted_checkpoint
    with pytest.raises(CheckpointError, match='makedirs'):
        init_detector(QUICKSTART, path)
    assert not marker.exists()


def test_training_load_from_refuses_a_crafted_checkpoint(tmp_path, crafted_checkpoint):
    path, marker = crafted_checkpoint
    config = write_config(tmp_path, extra=f'load_from = {path!r}')
    proc = run(['tools/train.py', config, '--work-dir', str(tmp_path / 'w')], check=False)
    assert_refused(proc, marker)
    assert not [f for f in os.listdir(tmp_path / 'w') if f.endswith('.pth')]  # no training


def test_converters_refuse_a_crafted_file_without_trusted(tmp_path, crafted_checkpoint):
    path, marker = crafted_checkpoint
    for tool in ('official2ddetr.py', 'mmdet2ddetr.py'):
        proc = run([f'tools/model_converters/{tool}', path, str(tmp_path / 'out.pth')],
                   check=False)
        assert proc.returncode != 0 and 'makedirs' in proc.stderr and '--trusted' in proc.stderr
        assert not marker.exists()
