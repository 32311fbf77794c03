"""tools/demo.py, the command over DetInferencer, on a shrunken quick-start model (random
weights) and small generated images: drawn detections (--out as before, --out-dir as
MMDetection's image_demo.py), .safetensors checkpoints, batches, and mistakes that stop in
one line naming the file."""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from ddetr.apis import inference_detector, init_detector
from ddetr.engine.checkpoint import save_safetensors

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'tools', 'demo.py')

_spec = importlib.util.spec_from_file_location('ddetr_demo_tool', DEMO)
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def checkpoint(tiny_config, tmp_path_factory):
    model = init_detector(tiny_config, None)
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': tuple(f'thing{i}' for i in range(6))}}},
               path)
    return str(path)


def stops_with(capsys, argv) -> str:
    """The one-line error demo.main(argv) stops with (status 1 from the command line)."""
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert message.startswith('demo.py: error: ') and 'Traceback' not in message
    return message


def test_demo_draws_detections(tiny_config, image, checkpoint, tmp_path, capsys):
    out = tmp_path / 'pred.jpg'
    assert demo.main([image, tiny_config, checkpoint, '--out', str(out),
                      '--score-thr', '0']) == 0
    printed = capsys.readouterr().out
    # all 10 queries x 6 classes (max_per_img 100), named by the checkpoint's classes
    assert '60 detections >= 0.0' in printed and 'thing0' in printed
    assert f'-> {out}' in printed
    drawn, original = cv2.imread(str(out)), cv2.imread(image)
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 50  # boxes were drawn
    assert os.listdir(tmp_path) == ['pred.jpg']  # --out alone writes nothing else
    # nothing above a threshold of 1 (MMDetection's spelling of the option)
    assert demo.main([image, tiny_config, checkpoint, '--out', str(out),
                      '--pred-score-thr', '1.01']) == 0
    assert '0 detections' in capsys.readouterr().out


def test_demo_out_dir_with_a_safetensors_checkpoint(tiny_config, image, checkpoint, tmp_path,
                                                    capsys, image_writer):
    """--out-dir writes vis/ and preds/ as MMDetection's image_demo.py; a .safetensors
    checkpoint with the same weights gives the same detections as the .pth."""
    model = init_detector(tiny_config, checkpoint)
    weights = str(tmp_path / 'tiny.safetensors')
    save_safetensors(weights, model.state_dict(), {'dataset_meta': model.dataset_meta})
    folder = tmp_path / 'images'
    folder.mkdir()
    image_writer(folder / 'a.jpg', 96, 128, seed=1)
    image_writer(folder / 'b.png', 90, 70, seed=2)
    image_writer(folder / 'c.jpg', 96, 128, seed=3)
    out_dir = tmp_path / 'outputs'
    assert demo.main([str(folder), tiny_config, weights, '--out-dir', str(out_dir),
                      '--batch-size', '2', '--score-thr', '0.01']) == 0
    printed = capsys.readouterr().out
    assert '[3/3]' in printed and f'-> {out_dir / "vis" / "c.jpg"}' in printed
    assert sorted(os.listdir(out_dir / 'vis')) == ['a.jpg', 'b.png', 'c.jpg']
    assert sorted(os.listdir(out_dir / 'preds')) == ['a.json', 'b.json', 'c.json']
    with open(out_dir / 'preds' / 'b.json') as f:
        saved = json.load(f)
    expected = inference_detector(model, str(folder / 'b.png')).pred_instances
    assert saved['labels'] == expected.labels.tolist()
    np.testing.assert_allclose(saved['scores'], expected.scores.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(saved['bboxes'], expected.bboxes.numpy(), rtol=0, atol=1e-4)
    # --no-save-pred / --no-save-vis
    quiet = tmp_path / 'quiet'
    assert demo.main([str(folder / 'a.jpg'), tiny_config, weights, '--out-dir', str(quiet),
                      '--no-save-pred']) == 0
    assert os.listdir(quiet) == ['vis']


def test_demo_folder_skips_a_corrupt_image(tiny_config, checkpoint, tmp_path, capsys, image_writer):
    folder = tmp_path / 'images'
    folder.mkdir()
    image_writer(folder / 'a.jpg', 80, 100, seed=1)
    image_writer(folder / 'b.png', 90, 70, seed=2)
    (folder / 'broken.jpg').write_bytes(b'not a jpeg')
    (folder / 'notes.txt').write_text('ignored')
    out = tmp_path / 'out'
    assert demo.main([str(folder), tiny_config, checkpoint, '--out', str(out),
                      '--batch-size', '2']) == 1
    assert sorted(os.listdir(out)) == ['a.jpg', 'b.png']
    captured = capsys.readouterr()
    assert f'cannot decode image file {folder / "broken.jpg"}' in captured.err
    assert '1 image(s) could not be read' in captured.err
    assert '[1/3]' in captured.out and '[2/3]' in captured.out


def test_demo_mistakes_stop_in_one_line_naming_the_file(tiny_config, image, checkpoint,
                                                        tmp_path, capsys, image_writer):
    out = str(tmp_path / 'o.jpg')
    missing = str(tmp_path / 'missing.pth')
    assert f'checkpoint {missing} does not exist' in stops_with(
        capsys, [image, tiny_config, missing, '--out', out])
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'\x00garbage')
    assert f'could not load checkpoint {corrupt}' in stops_with(
        capsys, [image, tiny_config, str(corrupt), '--out', out])
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a": 1')
    assert f'could not load checkpoint {cut}' in stops_with(
        capsys, [image, tiny_config, str(cut), '--out', out])
    other = tmp_path / 'other.pth'  # a checkpoint of another model (8 classes)
    torch.save({'state_dict': init_detector(tiny_config, None, num_classes=8).state_dict()},
               other)
    message = stops_with(capsys, [image, tiny_config, str(other), '--out', out])
    assert f'checkpoint {other} does not fit the model' in message
    assert 'bbox_head.cls_branches.0.weight' in message
    missing_image = str(tmp_path / 'missing.jpg')
    assert f'image file not found: {missing_image}' in stops_with(
        capsys, [missing_image, tiny_config, checkpoint, '--out', out])
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert 'no image files' in stops_with(
        capsys, [str(empty), tiny_config, checkpoint, '--out', out])
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not a jpeg')
    assert f'cannot decode image file {broken}' in stops_with(
        capsys, [str(broken), tiny_config, checkpoint, '--out', out])
    (tmp_path / 'images').mkdir()
    image_writer(tmp_path / 'images' / 'a.jpg')
    assert 'is a file, but IMAGE' in stops_with(
        capsys, [str(tmp_path / 'images'), tiny_config, checkpoint, '--out', image])


def test_demo_command_line_error_has_no_traceback(tiny_config, checkpoint, tmp_path):
    missing = str(tmp_path / 'missing.jpg')
    proc = subprocess.run([sys.executable, DEMO, missing, tiny_config, checkpoint,
                           '--out', str(tmp_path / 'o.jpg')],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f'demo.py: error: image file not found: {missing}'
