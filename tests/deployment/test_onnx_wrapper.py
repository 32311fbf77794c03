"""ONNXDetector: its outputs equal the detector's own predict (every pixel valid, no
rescale), and the single-stage variants (learned queries, with and without box
refinement) export with --dynamic and match onnxruntime at two sizes (the quick-start
export in tests/tools/test_deployment.py covers two-stage)."""
import importlib.util
import os.path as osp

import onnxruntime as ort
import pytest
import torch

from ddetr.apis import init_detector
from ddetr.deployment import ONNXDetector

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
_spec = importlib.util.spec_from_file_location(
    'ddetr_export_onnx_tool_w', osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py'))
export_onnx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_onnx)

VARIANTS = dict(base=['model.as_two_stage=False', 'model.with_box_refine=False'],
                refine=['model.as_two_stage=False', 'model.with_box_refine=True'])


pytestmark = pytest.mark.usefixtures('one_thread')


def small_model(variant):
    options = VARIANTS[variant] + ['model.encoder.num_layers=1', 'model.decoder.num_layers=2',
                                   'model.num_queries=20']
    model = init_detector(QUICKSTART, None, cfg_options=options, seed=0).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # spread the class scores (see tests/tools/test_deployment.py)
        for branch in model.bbox_head.cls_branches:
            branch.bias.copy_(torch.rand(branch.bias.shape, generator=gen) * 4 - 3)
    return model


def test_wrapper_equals_predict_and_checks_its_input():
    model = small_model('refine')
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dets, labels = ONNXDetector(model)(x)
    ref_dets, ref_labels = export_onnx.pytorch_detections(model, x)
    torch.testing.assert_close(dets[0], torch.from_numpy(ref_dets), rtol=0, atol=1e-5)
    assert torch.equal(labels[0], torch.from_numpy(ref_labels))
    assert labels.dtype == torch.int64
    with pytest.raises(ValueError, match=r'\(1, 3, H, W\)'):
        ONNXDetector(model)(torch.zeros(2, 3, 64, 64))


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_single_stage_dynamic_export(variant, tmp_path):
    model = small_model(variant)
    out = str(tmp_path / f'{variant}.onnx')
    export_onnx.export(model, out, (128, 160), dynamic=True)
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    for seed, shape in enumerate(((128, 160), (96, 224))):
        x = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(seed))
        diff = export_onnx.compare(export_onnx.pytorch_detections(model, x),
                                   export_onnx.onnx_detections(session, x))
        assert diff['label_mismatches'] == 0, (shape, diff)
        assert diff['box_px'] <= 1e-3 and diff['score'] <= 1e-4, (shape, diff)
