"""ONNXDetector: its padding mask is the detector's, its outputs equal the detector's own
predict on a padded batch, the mask survives export at any size (the levels' resized masks,
valid ratios and positional encodings in onnxruntime equal PyTorch's), and the
single-stage variants (learned queries, with and without box refinement) export with
--dynamic: a padded batch of two images of different sizes gives each image what ddetr
gives it in PyTorch and what it gets alone (the quick-start two-stage model is exported in
test_onnx_export.py).

Tolerances, onnxruntime against PyTorch: 1e-3 px on boxes, 1e-4 on scores (--verify's
defaults). Both run float32 with different kernels (MLAS against oneDNN convolutions,
GridSample against the compiled op's bilinear sampling, other summation orders): the
largest differences seen are ~2e-5 px and ~3e-7, relative errors of ~1e-7; a mask or a
valid ratio off by one row moves boxes by pixels and scores by 1e-2 or more. A batch
against each image alone, both in onnxruntime: 1e-4 px and 1e-6, where 0 is seen (the same
kernels; only the batch size differs).
"""
import os.path as osp
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from mmdet.structures import DetDataSample
from torch import nn

from ddetr.apis import init_detector
from ddetr.deployment import (
    ONNXDetector,
    compare,
    exact_nearest_resize,
    export_onnx,
    onnx_detections,
    pad_batch,
    padding_masks,
    pytorch_detections,
)
from ddetr.models.detectors.deformable_detr import DeformableDETR

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
SHRINK = ['model.encoder.num_layers=1', 'model.decoder.num_layers=2', 'model.num_queries=20']
VARIANTS = dict(base=['model.as_two_stage=False', 'model.with_box_refine=False'],
                refine=['model.as_two_stage=False', 'model.with_box_refine=True'])
ONNX_TOL = dict(box_px=1e-3, score=1e-4)
BATCH_TOL = dict(box_px=1e-4, score=1e-6)

pytestmark = pytest.mark.usefixtures('one_thread')


def small_model(variant):
    model = init_detector(QUICKSTART, None,
                          cfg_options=VARIANTS[variant] + SHRINK, seed=0).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # spread the class scores (see tests/tools/test_deployment.py)
        for branch in model.bbox_head.cls_branches:
            branch.bias.copy_(torch.rand(branch.bias.shape, generator=gen) * 4 - 3)
    return model


def random_images(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=gen) for h, w in sizes]


def assert_within(diff, tol, what):
    assert diff['label_mismatches'] == 0, (what, diff)
    assert diff['box_px'] <= tol['box_px'] and diff['score'] <= tol['score'], (what, diff)


def test_padding_masks_equal_the_detectors():
    x = torch.zeros(3, 3, 40, 56)
    sizes = [(40, 56), (17, 56), (33, 9)]
    samples = [DetDataSample(metainfo=dict(img_shape=hw)) for hw in sizes]
    ref = DeformableDETR.padding_masks(x, samples)
    assert torch.equal(padding_masks(torch.tensor(sizes), 40, 56), ref)
    assert ref[1, 17:].all() and not ref[1, :17].any()


def test_wrapper_equals_predict_on_a_padded_batch_and_checks_its_input():
    model = small_model('refine')
    batch, sizes = pad_batch(random_images([(96, 128), (128, 70)]))
    with torch.no_grad():
        dets, labels = ONNXDetector(model)(batch, torch.tensor(sizes))
    for i, (ref_dets, ref_labels) in enumerate(pytorch_detections(model, batch, sizes)):
        torch.testing.assert_close(dets[i], torch.from_numpy(ref_dets), rtol=0, atol=1e-5)
        assert torch.equal(labels[i], torch.from_numpy(ref_labels))
        # boxes inside each image's valid region
        assert dets[i, :, [0, 2]].max() <= sizes[i][1] and dets[i, :, [1, 3]].max() <= sizes[i][0]
    assert labels.dtype == torch.int64
    # no img_shape: every pixel is image, as predict without padding
    with torch.no_grad():
        dets, labels = ONNXDetector(model)(batch[:1])
    ref_dets, ref_labels = pytorch_detections(model, batch[:1])[0]
    torch.testing.assert_close(dets[0], torch.from_numpy(ref_dets), rtol=0, atol=1e-5)
    wrapper = ONNXDetector(model)
    with pytest.raises(ValueError, match=r'\(bs, 3, H, W\)'):
        wrapper(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r'img_shape must be \(2, 2\)'):
        wrapper(torch.zeros(2, 3, 64, 64), torch.tensor([[64, 64]]))
    with pytest.raises(ValueError, match='must lie in'):
        wrapper(torch.zeros(2, 3, 64, 64), torch.tensor([[64, 64], [65, 10]]))


class LevelMasks(nn.Module):
    """The padding mask of an (input, img_shape) batch through the detector's own
    ``pre_transformer``, on maps of the backbone's sizes (ceil(H / 2) per stride-2 step,
    as ResNet's and the neck's convolutions give): its flattened masks, valid ratios and
    positional encodings."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, input, img_shape):  # noqa: A002
        masks = padding_masks(img_shape, input.shape[2], input.shape[3])
        x, feats = input, []
        for step in range(2 + self.detector.num_feature_levels):
            x = F.max_pool2d(x, 3, 2, 1)
            if step >= 2:  # strides 8, 16, 32, 64
                feats.append(x)
        encoder_inputs, _ = self.detector.pre_transformer(tuple(feats), masks)
        return (encoder_inputs['key_padding_mask'], encoder_inputs['valid_ratios'],
                encoder_inputs['query_pos'])


def test_level_masks_in_onnxruntime_equal_pytorch_at_many_sizes(tmp_path):
    """Resizing the mask to each level (nearest) is where an export could drift by one row
    at some sizes: 60 random batches, sizes 33..300, every level's mask must be equal."""
    module = LevelMasks(small_model('base')).eval()
    out = str(tmp_path / 'masks.onnx')
    example = (torch.zeros(2, 3, 96, 128), torch.tensor([[96, 128], [50, 77]]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(module, example, out, input_names=['input', 'img_shape'],
                          output_names=['mask', 'ratios', 'pos'], opset_version=17,
                          dynamic_axes=dict(input={0: 'b', 2: 'h', 3: 'w'}, img_shape={0: 'b'}),
                          dynamo=False)
    proto = onnx.load(out)
    assert exact_nearest_resize(proto) == module.detector.num_feature_levels
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    rng = np.random.default_rng(0)
    for _ in range(60):
        height, width = rng.integers(33, 301, 2)
        bs = int(rng.integers(1, 4))
        sizes = np.stack([rng.integers(1, height + 1, bs), rng.integers(1, width + 1, bs)], 1)
        x = torch.zeros(bs, 3, height, width)
        with torch.no_grad():
            ref = module(x, torch.from_numpy(sizes))
        got = session.run(None, dict(input=x.numpy(), img_shape=sizes.astype(np.int64)))
        what = (height, width, sizes.tolist())
        assert np.array_equal(got[0], ref[0].numpy()), what
        np.testing.assert_array_equal(got[1], ref[1].numpy(), err_msg=str(what))
        np.testing.assert_allclose(got[2], ref[2].numpy(), rtol=0, atol=1e-5,
                                   err_msg=str(what))


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_single_stage_dynamic_export_padded_batch(variant, tmp_path):
    model = small_model(variant)
    out = str(tmp_path / f'{variant}.onnx')
    export_onnx(model, out, (128, 160), dynamic=True)
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    images = random_images([(96, 150), (131, 100), (64, 64)], seed=2)
    # two images of different sizes padded together, and three (the batch axis is free)
    for count in (2, 3):
        batch, sizes = pad_batch(images[:count])
        got = onnx_detections(session, batch, sizes)
        refs = pytorch_detections(model, batch, sizes)
        for i in range(count):
            what = (variant, count, i)
            assert_within(compare(refs[i], got[i]), ONNX_TOL, what)
            alone = onnx_detections(session, batch[i:i + 1], sizes[i:i + 1])[0]
            assert_within(compare(alone, got[i], BATCH_TOL['score']), BATCH_TOL, what)
    # an image alone at its own size (nothing padded)
    x = images[0][None]
    assert_within(compare(pytorch_detections(model, x)[0], onnx_detections(session, x)[0]),
                  ONNX_TOL, 'own size')

