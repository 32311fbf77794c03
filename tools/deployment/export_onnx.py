"""Export a ddetr detector to ONNX with MMDeploy's detection interface, and check it.

    python tools/deployment/export_onnx.py CONFIG CKPT --out model.onnx
    python tools/deployment/export_onnx.py CONFIG CKPT --out model.onnx --shape 800 1333 \\
        --verify --image demo.jpg
    python tools/deployment/export_onnx.py CONFIG CKPT --out model.onnx --dynamic

The whole detector is exported: backbone, neck, encoder, decoder, head and post-processing
(sigmoid, top-k over queries x classes, boxes to x1, y1, x2, y2 pixels of the input):

    input   (1, 3, H, W) float32, normalized (the config's data preprocessor mean/std,
            RGB) and padded (bottom/right, zeros); every pixel counts as valid
    dets    (1, N, 5) float32 x1, y1, x2, y2, score;  labels  (1, N) int64

N is the head's ``test_cfg.max_per_img`` (capped at queries x classes). The deformable
attention exports through its grid_sample path (ONNX GridSample: opset >= 16). The input is
(H, W) = --shape, by default the test pipeline's Resize scale; with --dynamic H and W are
free axes. The mean, std, channel order, resize scale and class names are stored in the
model's metadata_props, so tools/deployment/onnx_demo.py needs only the .onnx file.

--verify runs the file in onnxruntime on --image (prepared with the config's test pipeline
and data preprocessor, padded to --shape; with --dynamic at its own size and padded to a
multiple of 32) and the model in PyTorch (its own predict, the
default ms_deform_attn backend) on the same input, prints the largest differences (detections matched by label and score, so
equal-score pairs may swap places) and exits
with 1 beyond --box-tol px (1e-3) or --score-tol (1e-4). Exit code 2: bad arguments/files.
"""
import argparse
import json
import os.path as osp
import sys
import time
import warnings
from typing import Dict, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

MIN_OPSET = 16  # GridSample


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a ddetr detector to ONNX (MMDeploy interface: input -> dets, '
                    'labels) and optionally check it against PyTorch with onnxruntime.',
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help="checkpoint file ('none': random weights drawn "
                        "with --seed, to try the export)")
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='input height and width (default: the test pipeline\'s Resize '
                             'scale); with --dynamic the example shape of the trace')
    parser.add_argument('--dynamic', action='store_true',
                        help='export H and W as dynamic axes (any input size)')
    parser.add_argument('--opset', type=int, default=17,
                        help=f'ONNX opset (default 17, at least {MIN_OPSET} for GridSample)')
    parser.add_argument('--verify', action='store_true',
                        help='compare onnxruntime with PyTorch on --image')
    parser.add_argument('--image', help='image file for --verify')
    parser.add_argument('--box-tol', type=float, default=1e-3,
                        help='--verify: largest allowed box difference in px (1e-3)')
    parser.add_argument('--score-tol', type=float, default=1e-4,
                        help='--verify: largest allowed score difference (1e-4)')
    parser.add_argument('--seed', type=int, default=0, help="seed of 'none' weights (0)")
    parser.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE', default=None,
                        help='override config keys')
    args = parser.parse_args(argv)
    if args.opset < MIN_OPSET:
        parser.error(f'--opset {args.opset}: the deformable attention needs GridSample, '
                     f'opset {MIN_OPSET} or newer')
    if args.verify and not args.image:
        parser.error('--verify needs --image IMG')
    if args.image and not osp.isfile(args.image):
        parser.error(f'--image {args.image} does not exist')
    if args.shape and min(args.shape) < 32:
        parser.error(f'--shape {args.shape[0]} {args.shape[1]}: H and W must be >= 32 '
                     f'(the backbone downsamples by 32)')
    return args


def resize_step(cfg) -> Optional[dict]:
    """The test pipeline's Resize step (None when it has none)."""
    from ddetr.apis import build_test_pipeline
    for step in build_test_pipeline(cfg).transforms:
        if type(step).__name__ == 'Resize':
            return dict(scale=tuple(step.scale) if step.scale else None,
                        keep_ratio=bool(step.keep_ratio))
    return None


def default_shape(cfg) -> Tuple[int, int]:
    """(H, W) large enough for any image out of the test pipeline's Resize."""
    resize = resize_step(cfg)
    if resize is None or resize['scale'] is None:
        raise ValueError(f'config {cfg.filename}: the test pipeline has no Resize with a '
                         f'scale; give the input size with --shape H W')
    w, h = resize['scale']  # mmcv's (w, h)
    if resize['keep_ratio']:  # the long side fits max(scale), the short side min(scale)
        side = max(w, h)
        return side, side
    return h, w


def metadata(model, shape: Tuple[int, int], dynamic: bool) -> Dict[str, str]:
    """What onnx_demo.py needs to prepare an image and name the classes."""
    pre = model.data_preprocessor
    mean = pre.mean.flatten().tolist() if getattr(pre, 'mean', None) is not None else [0.0] * 3
    std = pre.std.flatten().tolist() if getattr(pre, 'std', None) is not None else [1.0] * 3
    resize = resize_step(model.cfg)
    return dict(
        ddetr_format='1', mean=json.dumps(mean), std=json.dumps(std),
        bgr_to_rgb=json.dumps(bool(getattr(pre, '_channel_conversion', False))),
        input_shape=json.dumps(list(shape)), dynamic=json.dumps(dynamic),
        resize=json.dumps(resize), classes=json.dumps(list(model.dataset_meta['classes'])),
        pad_value=json.dumps(float(getattr(pre, 'pad_value', 0))))


def export(model, out: str, shape: Tuple[int, int], dynamic: bool = False,
           opset: int = 17) -> None:
    """Trace ``ONNXDetector(model)`` on a (1, 3, H, W) input and write ``out`` with
    ``metadata`` in its metadata_props.

    The TorchScript exporter (``dynamo=False``) is used: torch 2.14's dynamo exporter
    needs onnxscript (not a dependency) and would have to trace data-dependent level
    loops symbolically; the tracer keeps the sizes symbolic through ``level_shapes``.
    """
    import onnx
    import torch

    from ddetr.deployment import ONNXDetector
    from ddetr.ops import msda_backend
    wrapper = ONNXDetector(model).eval()
    example = torch.zeros(1, 3, *shape)
    dynamic_axes = dict(input={2: 'height', 3: 'width'}) if dynamic else None
    with torch.no_grad(), msda_backend('pytorch'), warnings.catch_warnings():
        # the tracer's notes on shape-dependent Python values; the dynamic case is tested
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', message='.*legacy TorchScript-based ONNX export')
        warnings.filterwarnings('ignore', message='Constant folding - Only steps=1')
        warnings.filterwarnings('ignore', category=DeprecationWarning,
                                message='The feature will be removed')
        torch.onnx.export(wrapper, (example,), out, input_names=['input'],
                          output_names=['dets', 'labels'], opset_version=opset,
                          dynamic_axes=dynamic_axes, dynamo=False, do_constant_folding=True)
    proto = onnx.load(out)
    onnx.checker.check_model(proto)
    del proto.metadata_props[:]
    for key, value in metadata(model, shape, dynamic).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, out)


def pad_to(inputs, shape: Tuple[int, int], pad_value: float = 0.0):
    """(1, 3, h, w) -> (1, 3, H, W) padded bottom/right, as the data preprocessor pads."""
    import torch.nn.functional as F
    h, w = inputs.shape[-2:]
    if h > shape[0] or w > shape[1]:
        raise ValueError(f'the prepared image is {h}x{w}, larger than the exported input '
                         f'{shape[0]}x{shape[1]}; export with a larger --shape (or --dynamic)')
    return F.pad(inputs, (0, shape[1] - w, 0, shape[0] - h), value=pad_value)


def pytorch_detections(model, inputs):
    """ddetr's own predict on ``inputs`` (1, 3, H, W) with every pixel valid and no rescale:
    (dets (N, 5), labels (N,)) numpy, in pixels of ``inputs``."""
    import torch
    from mmdet.structures import DetDataSample
    h, w = inputs.shape[-2:]
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w),
                                         ori_shape=(h, w), scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        pred = model.predict(inputs, [sample], rescale=False)[0].pred_instances
    dets = torch.cat([pred.bboxes, pred.scores[:, None]], -1)
    return dets.numpy(), pred.labels.numpy()


def onnx_detections(session, inputs):
    dets, labels = session.run(['dets', 'labels'], dict(input=inputs.numpy()))
    return dets[0], labels[0]


def compare(ref, got, score_tol: float = 1e-4) -> Dict[str, float]:
    """Largest differences between two (dets (N, 5), labels (N,)) results.

    Scores come sorted from the top-k, so they are compared rank by rank. Each detection
    is then matched to the reference detection with the same label, a score within
    ``score_tol`` and the closest box: (query, class) pairs with equal scores may come out
    of the top-k in either order (saturated sigmoids) without being a difference.
    ``label_mismatches`` counts detections without such a partner."""
    import numpy as np
    (ref_dets, ref_labels), (dets, labels) = ref, got
    if dets.shape != ref_dets.shape or labels.shape != ref_labels.shape:
        raise ValueError(f'onnxruntime gave dets {dets.shape} and labels {labels.shape}, '
                         f'PyTorch {ref_dets.shape} and {ref_labels.shape}')
    score = float(np.abs(dets[:, 4] - ref_dets[:, 4]).max()) if len(dets) else 0.0
    # (N, N): candidate partners, and the largest coordinate difference to each
    partner = ((labels[:, None] == ref_labels[None]) &
               (np.abs(dets[:, None, 4] - ref_dets[None, :, 4]) <= score_tol))
    box_diff = np.abs(dets[:, None, :4] - ref_dets[None, :, :4]).max(-1)
    box_diff = np.where(partner, box_diff, np.inf).min(1)  # (N,)
    matched = np.isfinite(box_diff)
    return dict(box_px=float(box_diff[matched].max()) if matched.any() else 0.0,
                score=score, label_mismatches=int((~matched).sum()))


def verify_inputs(model, image: str, shape: Tuple[int, int], dynamic: bool):
    """[(what, (1, 3, H, W))] for --verify: the prepared image padded to the exported
    input; with --dynamic, the image at its own size and padded to the next multiple of
    32 (two different sizes)."""
    from ddetr.apis import prepare_image
    inputs = prepare_image(model, image)['inputs'].float()
    pad_value = float(getattr(model.data_preprocessor, 'pad_value', 0))
    if not dynamic:
        return [('padded to the exported input', pad_to(inputs, shape, pad_value))]
    h, w = inputs.shape[-2:]
    padded = (h // 32 + 1) * 32, (w // 32 + 1) * 32
    return [('at its own size', inputs),
            ('padded to a multiple of 32', pad_to(inputs, padded, pad_value))]


def verify(model, onnx_file: str, cases, box_tol: float, score_tol: float) -> bool:
    """Run onnxruntime and PyTorch on each case; print the differences; True when all are
    within the tolerances."""
    import onnxruntime as ort
    session = ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    ok = True
    for what, x in cases:
        diff = compare(pytorch_detections(model, x), onnx_detections(session, x), score_tol)
        good = (diff['box_px'] <= box_tol and diff['score'] <= score_tol
                and diff['label_mismatches'] == 0)
        ok &= good
        print(f'verify {what} {tuple(x.shape[-2:])}: largest box difference '
              f'{diff["box_px"]:.3g} px (tol {box_tol:g}), score {diff["score"]:.3g} '
              f'(tol {score_tol:g}), {diff["label_mismatches"]} label mismatches: '
              f'{"OK" if good else "FAILED"}', flush=True)
    return ok


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from ddetr.apis import CheckpointError, init_detector
    try:
        model = init_detector(args.config, args.checkpoint, 'cpu', args.cfg_options,
                              seed=args.seed)
        shape = tuple(args.shape) if args.shape else default_shape(model.cfg)
    except (FileNotFoundError, CheckpointError, KeyError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    model = model.float()
    try:
        cases = (verify_inputs(model, args.image, shape, args.dynamic) if args.verify
                 else [])
    except (OSError, ValueError) as e:  # unreadable image, larger than --shape
        print(f'error: --image {args.image}: {e}', file=sys.stderr)
        return 2
    if getattr(model, 'as_two_stage', False):
        # two-stage picks num_queries proposals among the encoder's pixels
        num_keys = sum((shape[0] // s) * (shape[1] // s) for s in (8, 16, 32))
        if num_keys < model.num_queries:
            print(f'error: --shape {shape[0]} {shape[1]} gives the encoder too few pixels '
                  f'for {model.num_queries} two-stage proposals; use a larger shape',
                  file=sys.stderr)
            return 2
    start = time.time()
    print(f'exporting {args.config} ({args.checkpoint}) at {shape[0]}x{shape[1]}'
          f'{" (dynamic H, W)" if args.dynamic else ""}, opset {args.opset} ...', flush=True)
    torch.set_grad_enabled(False)
    export(model, args.out, shape, args.dynamic, args.opset)
    print(f'wrote {args.out} ({osp.getsize(args.out) / 2**20:.1f} MiB) in '
          f'{time.time() - start:.1f}s', flush=True)
    if args.verify and not verify(model, args.out, cases, args.box_tol, args.score_tol):
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
