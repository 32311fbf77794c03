"""tools/deployment: export_onnx.py --dynamic --verify on a padded batch of two images,
onnx_demo.py running a folder in batches without torch/mmdet and giving each image of a
batch the detections ddetr gives it in PyTorch in the same batch, and both tools stopping
on bad input with one line (no traceback).

The model is the quick-start config shrunk (1 encoder and 2 decoder layers, 20 queries)
with random weights whose class scores are spread; tolerances as in
tests/deployment/test_onnx_wrapper.py (1e-3 px, 1e-4 score: float32 with other kernels).
"""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch

from ddetr.apis import build_test_pipeline, init_detector
from ddetr.deployment import compare, export_onnx, metadata

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
EXPORT_TOOL = osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py')
DEMO_TOOL = osp.join(ROOT, 'tools', 'deployment', 'onnx_demo.py')
SHRINK = ['model.encoder.num_layers=1', 'model.decoder.num_layers=2', 'model.num_queries=20']
SHAPE = (128, 160)  # the static export: smaller than the test pipeline's 256 px on purpose
LIGHT = ('ddetr', 'ddetr.cli', 'ddetr.errors', 'ddetr.version')  # what onnx_demo may import


def load_tool(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_tool = load_tool('ddetr_export_onnx_tool', EXPORT_TOOL)
onnx_demo = load_tool('ddetr_onnx_demo_tool', DEMO_TOOL)

pytestmark = pytest.mark.usefixtures('one_thread')


def spread_scores(model, seed=0):
    """Random init gives every (query, class) nearly the prior score, so the top-k order
    would hang on rounding; seeded noise on the class layers spreads the scores like a
    trained model's (a wrong label or order then shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for branch in model.bbox_head.cls_branches:
            branch.weight.add_(torch.randn(branch.weight.shape, generator=gen) * 0.05)
            branch.bias.copy_(torch.rand(branch.bias.shape, generator=gen) * 4 - 3)
    return model


@pytest.fixture(scope='module')
def model():
    return spread_scores(init_detector(QUICKSTART, None, cfg_options=SHRINK, seed=0)).float()


@pytest.fixture(scope='module')
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'quickstart_shrunk.pth'
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(model.dataset_meta))), path)
    return str(path)


@pytest.fixture(scope='module')
def static_onnx(model, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('onnx') / 'static.onnx')
    export_onnx(model, out, SHAPE, dynamic=False)
    return out


@pytest.fixture(scope='module')
def dynamic_onnx(model, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('onnx') / 'dynamic.onnx')
    export_onnx(model, out, SHAPE, dynamic=True)
    return out


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """A folder of three images of different sizes and aspect ratios, with bright shapes."""
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((117, 151), (200, 90), (64, 64))):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(img, (w // 10, h // 6), (w // 2, h // 2), (255, 255, 255), -1)
        cv2.circle(img, (3 * w // 4, 2 * h // 3), min(h, w) // 6, (0, 200, 255), -1)
        paths.append(str(folder / f'img{i}.png'))
        cv2.imwrite(paths[-1], img)
    return paths


def run(tool, *args, timeout=300):
    return subprocess.run([sys.executable, tool, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc, tool, *fragments):
    """Exit code 1, stderr starting with '<tool>: error: ' and naming ``fragments``, no
    traceback."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith(f'{tool}: error: '), proc.stderr
    for fragment in fragments:
        assert fragment in first, proc.stderr


def stops_in_one_line(capsys, main, argv) -> str:
    """``main(argv)`` in this process exits with 1; the first line of what it wrote to
    stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return err.strip().splitlines()[0]


def test_cli_dynamic_export_verifies_a_padded_batch(checkpoint, images, tmp_path):
    out = str(tmp_path / 'model.onnx')
    proc = run(EXPORT_TOOL, QUICKSTART, checkpoint, '--out', out, '--shape', *SHAPE,
               '--dynamic', '--verify', '--image', *images[:2], '--cfg-options', *SHRINK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith('verify')]
    # each image at its own size (the test pipeline's 198x256 and 256x115), then both in a
    # batch padded to 288x288: against PyTorch and against each alone
    assert len(lines) == 6 and all(line.endswith('OK') for line in lines), proc.stdout
    assert '(198, 256)' in lines[0] and '(256, 115)' in lines[1]
    assert all('(288, 288)' in line for line in lines[2:]), lines
    assert sum('batch vs alone' in line for line in lines) == 2
    assert [i.name for i in onnx.load(out).graph.input] == ['input', 'img_shape']


@pytest.mark.parametrize('case', ['config', 'checkpoint', 'other config', 'image',
                                  'larger image'])
def test_cli_bad_input_stops_before_the_export(case, checkpoint, images, tmp_path, capsys):
    out = tmp_path / 'x.onnx'
    missing = str(tmp_path / 'missing.xyz')
    config, ckpt, image, expected = QUICKSTART, checkpoint, images[0], 'missing.xyz'
    shape, shrink = [], ['--cfg-options', *SHRINK]
    if case == 'config':
        config = missing
    elif case == 'checkpoint':
        ckpt = missing
    elif case == 'other config':  # the shrunk model's checkpoint, the full quick start
        shrink, expected = [], f'checkpoint {checkpoint} does not fit'
    elif case == 'image':
        image = missing
    else:  # 198x256 after the test pipeline's Resize, for a static 128x160 input
        shape, expected = ['--shape', *map(str, SHAPE)], 'larger than the input 128x160'
    message = stops_in_one_line(capsys, export_tool.main, [
        config, ckpt, '--out', str(out), *shrink, '--verify', '--image', image, *shape])
    assert message.startswith('export_onnx.py: error: ') and expected in message, message
    assert not out.exists()


def test_cli_rejects_an_old_opset(capsys):
    with pytest.raises(SystemExit):
        export_tool.parse_args([QUICKSTART, 'none', '--out', 'x.onnx', '--opset', '13'])
    assert 'GridSample' in capsys.readouterr().err


def pytorch_batch(model, paths):
    """ddetr in PyTorch on the images as one batch, as tools/test.py runs it: the test
    pipeline, the data preprocessor (padding to the largest image), predict with rescale."""
    pipeline = build_test_pipeline(model.cfg)
    data = [pipeline(dict(img=cv2.imread(p), img_id=i, img_path=p)) for i, p in enumerate(paths)]
    batch = model.data_preprocessor(dict(inputs=[d['inputs'] for d in data],
                                         data_samples=[d['data_samples'] for d in data]), False)
    with torch.no_grad():
        preds = model.predict(batch['inputs'], batch['data_samples'], rescale=True)
    results = []
    for pred in preds:
        pred = pred.pred_instances
        results.append((torch.cat([pred.bboxes, pred.scores[:, None]], -1).numpy(),
                        pred.labels.numpy()))
    return batch['inputs'].shape[-2:], results


def test_demo_batch_equals_ddetr_in_pytorch_on_the_same_batch(model, dynamic_onnx, images):
    session, meta, layout = onnx_demo.load_model(dynamic_onnx)
    assert layout == onnx_demo.InputLayout(None, None, None, True)
    got = onnx_demo.detect(session, [cv2.imread(p) for p in images], meta, layout)
    padded, refs = pytorch_batch(model, images)
    assert tuple(padded) == (256, 256)  # 198x256, 256x115 and 256x256 padded together
    for i, ((boxes, scores, labels), ref) in enumerate(zip(got, refs)):
        diff = compare(ref, (np.concatenate([boxes, scores[:, None]], 1), labels))
        assert diff['label_mismatches'] == 0, (i, diff)
        # boxes in original-image pixels (the 64x64 image was upscaled 4x: 1e-3 / 4 px)
        assert diff['box_px'] <= 1e-3 and diff['score'] <= 1e-4, (i, diff)


def test_demo_prepares_images_as_the_test_pipeline(model, images):
    """onnx_demo's own resize/normalize gives the input ddetr's pipeline + preprocessor give."""
    from ddetr.apis import prepare_image
    meta = {k: json.loads(v) for k, v in metadata(model, SHAPE, True).items()}
    for path in images:
        x, (scale_w, scale_h) = onnx_demo.prepare(cv2.imread(path), meta)
        batch = prepare_image(model, path)
        ref = batch['inputs'].numpy()[0]
        assert x.shape == ref.shape
        np.testing.assert_allclose(x, ref, atol=1e-5)
        scale_factor = batch['data_samples'][0].metainfo['scale_factor']
        assert (scale_w, scale_h) == pytest.approx(scale_factor)


def test_demo_runs_a_folder_in_batches_without_torch_or_mmdet(dynamic_onnx, images, tmp_path):
    out = str(tmp_path / 'results')
    folder = osp.dirname(images[0])
    code = (f'import runpy, sys; sys.argv = [{DEMO_TOOL!r}, {dynamic_onnx!r}, {folder!r}, '
            f'"--out", {out!r}, "--score-thr", "0.2", "--batch-size", "2"]\n'
            f'try:\n    runpy.run_path({DEMO_TOOL!r}, run_name="__main__")\n'
            f'except SystemExit as e:\n    assert not e.code, e.code\n'
            f'bad = sorted(m for m in sys.modules if m.split(".")[0] in '
            f'("torch", "mmdet", "mmengine", "mmcv", "ddetr", "torchvision") '
            f'and m not in {LIGHT!r})\n'
            f'print("HEAVY", bad)')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'HEAVY []' in proc.stdout, proc.stdout
    assert proc.stdout.count('detections >= 0.2') == 3, proc.stdout
    for path in images:
        drawn = cv2.imread(osp.join(out, osp.basename(path)))
        assert drawn is not None and drawn.shape == cv2.imread(path).shape
        assert (drawn != cv2.imread(path)).any()  # boxes were drawn


def test_demo_bad_input_stops_in_one_line(static_onnx, images, tmp_path):
    out = tmp_path / 'r.jpg'
    # a static model takes batches of one
    proc = run(DEMO_TOOL, static_onnx, osp.dirname(images[0]), '--out', tmp_path / 'r',
               '--batch-size', '2', timeout=60)
    assert_one_line_error(proc, 'onnx_demo.py', '--batch-size 2', 'takes batches of 1')
    # the image resized by the metadata's Resize (198x256) does not fit 128x160
    proc = run(DEMO_TOOL, static_onnx, images[0], '--out', out, timeout=60)
    assert_one_line_error(proc, 'onnx_demo.py', '198x256', 'larger than the model input 128x160')
    proc = run(DEMO_TOOL, static_onnx, tmp_path / 'missing.png', '--out', out, timeout=60)
    assert_one_line_error(proc, 'onnx_demo.py', 'missing.png')
    assert not out.exists()


def test_demo_names_a_model_that_is_not_ddetrs(tmp_path, images, capsys):
    x = onnx.helper.make_tensor_value_info('input', onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = onnx.helper.make_tensor_value_info('dets', onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node('Identity', ['input'], ['dets'])],
                                   'g', [x], [y])
    path = str(tmp_path / 'plain.onnx')
    onnx.save(onnx.helper.make_model(graph), path)
    message = stops_in_one_line(capsys, onnx_demo.main,
                                [path, images[0], '--out', str(tmp_path / 'r.jpg')])
    assert message.startswith('onnx_demo.py: error: ') and 'export_onnx.py' in message
    not_onnx = tmp_path / 'not.onnx'
    not_onnx.write_text('hello')
    message = stops_in_one_line(capsys, onnx_demo.main,
                                [str(not_onnx), images[0], '--out', str(tmp_path / 'r.jpg')])
    assert message.startswith(f'onnx_demo.py: error: could not load {not_onnx}'), message
    assert not os.path.exists(tmp_path / 'r.jpg')
