"""tools/deployment: ONNX export of the quick-start model (static and --dynamic) checked
against PyTorch in onnxruntime, --verify's exit codes, and onnx_demo.py running without
torch/mmdet and preparing images exactly as the config's test pipeline does."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ddetr.apis import init_detector, prepare_image

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
EXPORT_TOOL = osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py')
DEMO_TOOL = osp.join(ROOT, 'tools', 'deployment', 'onnx_demo.py')
SHAPE = (128, 160)


def load_tool(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_onnx = load_tool('ddetr_export_onnx_tool', EXPORT_TOOL)
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
    return spread_scores(init_detector(QUICKSTART, None, seed=0)).float()


@pytest.fixture(scope='module')
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'quickstart_spread.pth'
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(model.dataset_meta))), path)
    return str(path)


@pytest.fixture(scope='module')
def static_onnx(model, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('onnx') / 'static.onnx')
    export_onnx.export(model, out, SHAPE, dynamic=False)
    return out


@pytest.fixture(scope='module')
def dynamic_onnx(model, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('onnx') / 'dynamic.onnx')
    export_onnx.export(model, out, SHAPE, dynamic=True)
    return out


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    """An odd-sized image with a few bright shapes."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 80, (117, 151, 3), dtype=np.uint8)
    cv2.rectangle(img, (10, 20), (60, 90), (255, 255, 255), -1)
    cv2.circle(img, (110, 50), 25, (0, 200, 255), -1)
    path = str(tmp_path_factory.mktemp('img') / 'shapes.png')
    cv2.imwrite(path, img)
    return path


def session_of(path):
    return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


def normalized_input(shape, seed):
    return torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(seed))


def assert_parity(model, session, x):
    ref = export_onnx.pytorch_detections(model, x)
    got = export_onnx.onnx_detections(session, x)
    diff = export_onnx.compare(ref, got)
    assert diff['label_mismatches'] == 0, diff
    assert diff['box_px'] <= 1e-3 and diff['score'] <= 1e-4, diff
    # the scores really are spread (otherwise the comparison proves little)
    assert ref[0][:, 4].max() - ref[0][:, 4].min() > 0.1
    return ref


def test_static_export_interface_and_parity(model, static_onnx):
    proto = onnx.load(static_onnx)
    assert [i.name for i in proto.graph.input] == ['input']
    assert [o.name for o in proto.graph.output] == ['dets', 'labels']
    assert {n.op_type for n in proto.graph.node} >= {'GridSample', 'TopK', 'Sigmoid'}
    session = session_of(static_onnx)
    x = normalized_input(SHAPE, seed=1)
    dets, labels = session.run(['dets', 'labels'], dict(input=x.numpy()))
    n = model.bbox_head.test_cfg['max_per_img']
    assert dets.shape == (1, n, 5) and dets.dtype == np.float32
    assert labels.shape == (1, n) and labels.dtype == np.int64
    # x1, y1, x2, y2 in input pixels, inside the input
    assert (dets[0, :, 2] >= dets[0, :, 0]).all() and (dets[0, :, 3] >= dets[0, :, 1]).all()
    assert dets[0, :, [0, 2]].max() <= SHAPE[1] and dets[0, :, [1, 3]].max() <= SHAPE[0]
    assert_parity(model, session, x)
    # a static model takes only its own input size
    with pytest.raises(Exception):
        session.run(None, dict(input=normalized_input((96, 128), seed=2).numpy()))


def test_dynamic_export_parity_at_two_sizes(model, dynamic_onnx):
    session = session_of(dynamic_onnx)
    for shape, seed in (((96, 224), 3), ((160, 128), 4)):
        assert_parity(model, session, normalized_input(shape, seed))


def test_metadata_describes_the_preparation(model, static_onnx):
    props = {p.key: json.loads(p.value) for p in onnx.load(static_onnx).metadata_props}
    assert props['mean'] == pytest.approx([123.675, 116.28, 103.53])
    assert props['std'] == pytest.approx([58.395, 57.12, 57.375])
    assert props['bgr_to_rgb'] is True and props['dynamic'] is False
    assert props['input_shape'] == list(SHAPE)
    assert props['resize'] == dict(scale=[256, 256], keep_ratio=True)
    assert props['classes'] == list(model.dataset_meta['classes'])


def test_verify_catches_a_model_that_differs(model, static_onnx, image):
    x = normalized_input(SHAPE, seed=5)
    cases = [('random input', x)]
    assert export_onnx.verify(model, static_onnx, cases, 1e-3, 1e-4)
    other = spread_scores(init_detector(QUICKSTART, None, seed=0), seed=1).float()
    assert not export_onnx.verify(other, static_onnx, cases, 1e-3, 1e-4)


def test_compare_allows_equal_scores_to_swap_but_not_other_changes():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 100, (4, 4)).astype(np.float32)
    dets = np.concatenate([boxes, np.float32([[0.9], [0.5], [0.5], [0.1]])], 1)
    labels = np.array([1, 2, 3, 0])
    swapped = [0, 2, 1, 3]  # the two detections of score 0.5 in the other order
    diff = export_onnx.compare((dets, labels), (dets[swapped], labels[swapped]))
    assert diff == dict(box_px=0.0, score=0.0, label_mismatches=0)
    moved = dets.copy()
    moved[0, 2] += 0.01
    assert export_onnx.compare((dets, labels), (moved, labels))['box_px'] == pytest.approx(
        0.01, abs=1e-5)
    relabelled = labels.copy()
    relabelled[3] = 5
    assert export_onnx.compare((dets, labels), (dets, relabelled))['label_mismatches'] == 1
    # a different order of unequal scores is a score difference
    assert export_onnx.compare((dets, labels), (dets[::-1], labels[::-1]))['score'] > 0.5


def test_cli_dynamic_export_and_verify(checkpoint, image, tmp_path):
    out = str(tmp_path / 'model.onnx')
    proc = subprocess.run(
        [sys.executable, EXPORT_TOOL, QUICKSTART, checkpoint, '--out', out, '--shape',
         *map(str, SHAPE), '--dynamic', '--verify', '--image', image],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith('verify')]
    # the image resized by the test pipeline (198x256) and padded to a multiple of 32
    assert len(lines) == 2 and all(line.endswith('OK') for line in lines), proc.stdout
    assert '(198, 256)' in lines[0] and '(224, 288)' in lines[1]


def test_cli_rejects_old_opset_and_too_small_shape(image, tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_onnx.parse_args([QUICKSTART, 'none', '--out', 'x.onnx', '--opset', '13'])
    assert 'GridSample' in capsys.readouterr().err
    # the prepared image (198x256) does not fit a static 128x160 input: said before export
    out = str(tmp_path / 'small.onnx')
    assert export_onnx.main([QUICKSTART, 'none', '--out', out, '--shape', *map(str, SHAPE),
                             '--verify', '--image', image]) == 2
    assert 'larger than the exported input' in capsys.readouterr().err
    assert not osp.exists(out)


def test_demo_prepares_images_as_the_test_pipeline(model, image):
    """onnx_demo's own resize/normalize gives the input ddetr's pipeline + preprocessor give."""
    meta = {k: json.loads(v) for k, v in export_onnx.metadata(model, SHAPE, True).items()}
    x, (scale_w, scale_h) = onnx_demo.prepare(cv2.imread(image), meta)
    batch = prepare_image(model, image)
    ref = batch['inputs'].numpy()
    assert x.shape == ref.shape
    np.testing.assert_allclose(x, ref, atol=1e-5)
    scale_factor = batch['data_samples'][0].metainfo['scale_factor']
    assert (scale_w, scale_h) == pytest.approx(scale_factor)


def test_demo_runs_without_torch_or_mmdet(dynamic_onnx, image, tmp_path):
    out = str(tmp_path / 'result.jpg')
    code = (f'import runpy, sys; sys.argv = [{DEMO_TOOL!r}, {dynamic_onnx!r}, {image!r}, '
            f'"--out", {out!r}, "--score-thr", "0.2"]\n'
            f'try:\n    runpy.run_path({DEMO_TOOL!r}, run_name="__main__")\n'
            f'except SystemExit as e:\n    assert not e.code, e.code\n'
            f'bad = sorted(m for m in sys.modules if m.split(".")[0] in '
            f'("torch", "mmdet", "mmengine", "mmcv", "ddetr", "torchvision"))\n'
            f'print("HEAVY", bad)')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'HEAVY []' in proc.stdout, proc.stdout
    assert 'detections >= 0.2' in proc.stdout
    drawn = cv2.imread(out)
    assert drawn is not None and drawn.shape == cv2.imread(image).shape
    assert (drawn != cv2.imread(image)).any()  # boxes were drawn


def test_demo_names_a_model_without_metadata(tmp_path, image, capsys):
    x = onnx.helper.make_tensor_value_info('input', onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = onnx.helper.make_tensor_value_info('dets', onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node('Identity', ['input'], ['dets'])],
                                   'g', [x], [y])
    path = str(tmp_path / 'plain.onnx')
    onnx.save(onnx.helper.make_model(graph), path)
    assert onnx_demo.main([path, image, '--out', str(tmp_path / 'r.jpg')]) == 1
    assert 'export_onnx.py' in capsys.readouterr().err
