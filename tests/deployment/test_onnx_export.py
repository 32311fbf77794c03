"""export_onnx on the quick-start model (two-stage with box refinement, shrunk: 1 encoder
and 2 decoder layers, 20 queries; random weights with spread class scores): the static
file keeps MMDeploy's one-input interface and matches PyTorch; the dynamic file takes any
batch size and size with img_shape, gives each image of a padded batch what ddetr gives it
in PyTorch and what it gets alone, and really masks (the padding read as image gives other
detections); the metadata and the refusals.

Tolerances (see test_onnx_wrapper.py): onnxruntime against PyTorch 1e-3 px / 1e-4 score;
a batch against its images alone in onnxruntime 1e-4 px / 1e-6 (0 is seen).
"""
import json
import os.path as osp
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ddetr.apis import init_detector
from ddetr.deployment import (
    check_two_stage_shape,
    compare,
    default_shape,
    export_onnx,
    onnx_detections,
    pad_batch,
    pytorch_detections,
)
from ddetr.errors import ConfigError

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
SHRINK = ['model.encoder.num_layers=1', 'model.decoder.num_layers=2', 'model.num_queries=20']
SHAPE = (128, 160)
ONNX_TOL = dict(box_px=1e-3, score=1e-4)
BATCH_TOL = dict(box_px=1e-4, score=1e-6)

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def model():
    model = init_detector(QUICKSTART, None, cfg_options=SHRINK, seed=0).float()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # spread the class scores (see tests/tools/test_deployment.py)
        for branch in model.bbox_head.cls_branches:
            branch.weight.add_(torch.randn(branch.weight.shape, generator=gen) * 0.05)
            branch.bias.copy_(torch.rand(branch.bias.shape, generator=gen) * 4 - 3)
    return model


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


def session_of(path):
    return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


def random_images(sizes, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=gen) for h, w in sizes]


def assert_within(diff, tol, what):
    assert diff['label_mismatches'] == 0, (what, diff)
    assert diff['box_px'] <= tol['box_px'] and diff['score'] <= tol['score'], (what, diff)


def test_static_export_interface_and_parity(model, static_onnx):
    proto = onnx.load(static_onnx)
    assert [i.name for i in proto.graph.input] == ['input']
    assert [o.name for o in proto.graph.output] == ['dets', 'labels']
    ops = {n.op_type for n in proto.graph.node}
    assert ops >= {'GridSample', 'TopK', 'Sigmoid'} and 'Resize' not in ops
    session = session_of(static_onnx)
    x, _ = pad_batch(random_images([SHAPE], seed=1))
    dets, labels = session.run(['dets', 'labels'], dict(input=x.numpy()))
    n = model.bbox_head.test_cfg['max_per_img']
    assert dets.shape == (1, n, 5) and dets.dtype == np.float32
    assert labels.shape == (1, n) and labels.dtype == np.int64
    # x1, y1, x2, y2 in input pixels, inside the input
    assert (dets[0, :, 2] >= dets[0, :, 0]).all() and (dets[0, :, 3] >= dets[0, :, 1]).all()
    assert dets[0, :, [0, 2]].max() <= SHAPE[1] and dets[0, :, [1, 3]].max() <= SHAPE[0]
    ref = pytorch_detections(model, x)[0]
    assert_within(compare(ref, onnx_detections(session, x)[0]), ONNX_TOL, 'static')
    # the scores really are spread (otherwise the comparison proves little)
    assert ref[0][:, 4].max() - ref[0][:, 4].min() > 0.1
    # a static model takes only its own input size, and no padded batch
    with pytest.raises(Exception):
        session.run(None, dict(input=torch.zeros(1, 3, 96, 128).numpy()))
    with pytest.raises(ConfigError, match='--dynamic'):
        onnx_detections(session, x, [(100, 160)])


def test_dynamic_export_padded_batches(model, dynamic_onnx):
    proto = onnx.load(dynamic_onnx)
    assert [i.name for i in proto.graph.input] == ['input', 'img_shape']
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ['batch', 3, 'height', 'width']
    session = session_of(dynamic_onnx)
    images = random_images([(117, 150), (150, 101), (96, 96)], seed=2)
    for count in (2, 3):
        batch, sizes = pad_batch(images[:count])
        got = onnx_detections(session, batch, sizes)
        refs = pytorch_detections(model, batch, sizes)
        for i in range(count):
            what = (count, i, sizes[i])
            assert_within(compare(refs[i], got[i]), ONNX_TOL, what)
            alone = onnx_detections(session, batch[i:i + 1], sizes[i:i + 1])[0]
            assert_within(compare(alone, got[i], BATCH_TOL['score']), BATCH_TOL, what)
    # 168 / 6 = 28 (the stride-32 level) and the second image 2 x 28 rows high: ONNX's own
    # Resize rounding put that level's mask one row off (labels and scores of the second
    # image then differed, boxes by up to 50 px), see exact_nearest_resize
    batch, sizes = pad_batch(random_images([(168, 150), (56, 100)], seed=4))
    for i, (ref, out) in enumerate(zip(pytorch_detections(model, batch, sizes),
                                       onnx_detections(session, batch, sizes))):
        assert_within(compare(ref, out), ONNX_TOL, ('168 / 56', i))
    # the padding is masked: read as image (img_shape = the whole input) it gives others
    batch, sizes = pad_batch(images[:2])
    unmasked = onnx_detections(session, batch)[0]
    assert compare(unmasked, got[0])['score'] > 1e-3
    # each image alone at its own size, nothing padded
    for i, image in enumerate(images[:2]):
        x = image[None]
        assert_within(compare(pytorch_detections(model, x)[0], onnx_detections(session, x)[0]),
                      ONNX_TOL, ('own size', i))


def test_dynamic_export_runs_more_tokens_than_traced(model, dynamic_onnx):
    """Traced on 2 x 426 encoder tokens (128x160), run on 5440 (512x512): more than the
    4096-token chunks of the CPU FFN fast path, whose count a trace would fix (the export
    traces with the fast paths off)."""
    x = random_images([(512, 512)], seed=3)[0][None]
    assert_within(compare(pytorch_detections(model, x)[0],
                          onnx_detections(session_of(dynamic_onnx), x)[0]), ONNX_TOL, '512')


def test_metadata_describes_the_preparation(model, static_onnx, dynamic_onnx):
    props = {p.key: json.loads(p.value) for p in onnx.load(static_onnx).metadata_props}
    assert props['mean'] == pytest.approx([123.675, 116.28, 103.53])
    assert props['std'] == pytest.approx([58.395, 57.12, 57.375])
    assert props['bgr_to_rgb'] is True and props['dynamic'] is False
    assert props['input_shape'] == list(SHAPE) and props['inputs'] == ['input']
    assert props['resize'] == dict(scale=[256, 256], keep_ratio=True)
    assert props['classes'] == list(model.dataset_meta['classes'])
    assert props['pad_value'] == 0 and props['pad_size_divisor'] == 1
    props = {p.key: json.loads(p.value) for p in onnx.load(dynamic_onnx).metadata_props}
    assert props['dynamic'] is True and props['inputs'] == ['input', 'img_shape']


def test_refusals_name_the_setting(model, tmp_path):
    assert default_shape(model.cfg) == (256, 256)
    cfg = model.cfg.copy()
    cfg.test_pipeline = [step for step in cfg.test_pipeline if step['type'] != 'Resize']
    with pytest.raises(ConfigError, match='--shape H W'):
        default_shape(cfg)
    two_stage = SimpleNamespace(as_two_stage=True, num_feature_levels=4, num_queries=300)
    with pytest.raises(ConfigError, match='fewer than the 300 two-stage proposals'):
        check_two_stage_shape(two_stage, (96, 128))  # 12 x 16 + 6 x 8 + 3 x 4 + 2 x 2 = 256
    check_two_stage_shape(two_stage, (128, 128))
    with pytest.raises(ConfigError, match='opset 16 or newer'):
        export_onnx(model, str(tmp_path / 'x.onnx'), SHAPE, opset=13)
    with pytest.raises(ConfigError, match='larger than the input 128x160'):
        pad_batch(random_images([(129, 10)], seed=0), SHAPE)
