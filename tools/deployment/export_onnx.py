"""Export a ddetr detector to ONNX, and check it against ddetr in PyTorch.

    python tools/deployment/export_onnx.py CONFIG CKPT --out model.onnx
    python tools/deployment/export_onnx.py CONFIG CKPT --out model.onnx --shape 800 1333 \\
        --verify --image demo.jpg
    python tools/deployment/export_onnx.py CONFIG CKPT --out model.onnx --dynamic \\
        --verify --image a.jpg b.jpg

The whole detector is exported: backbone, neck, encoder, decoder, head and post-processing
(sigmoid, top-k over queries x classes, boxes to x1, y1, x2, y2 pixels of the input).

Static (MMDeploy's interface): ``input`` (1, 3, H, W) float32, normalized (the config's
data preprocessor mean/std, RGB) and padded bottom/right with zeros; every pixel counts as
image. (H, W) = --shape, by default the test pipeline's Resize scale.

--dynamic: ``input`` (N, 3, H, W), any N, H, W, a padded batch, and ``img_shape`` (N, 2)
int64, each image's valid (height, width) in it: the model masks the padding as ddetr does
in PyTorch, so each image of the batch gets the detections it gets in PyTorch in that batch.

Outputs: ``dets`` (N, max_per_img, 5) float32 x1, y1, x2, y2, score, boxes clipped to each
image's valid region; ``labels`` (N, max_per_img) int64. The deformable attention exports
through its grid_sample path (ONNX GridSample: opset >= 16). The preparation (mean, std,
channel order, Resize, padding) and the class names are stored in the model's
metadata_props, so tools/deployment/onnx_demo.py needs only the .onnx file.

--verify prepares the --image files with the config's test pipeline and data preprocessor
and runs the file in onnxruntime and the model in PyTorch (its own predict, the default
ms_deform_attn backend) on the same inputs: static, each image padded to --shape; dynamic,
each image at its own size, and all of them (a single one as well) as one batch padded to
the next multiple of 32 beyond the largest, where each image must also get what it gets in
onnxruntime alone in a batch of one of that size. It prints the largest differences
(detections matched by label and score, so equal-score pairs may swap places) and exits
with 1 beyond --box-tol px (1e-3) or --score-tol (1e-4). docs/deployment.md has the details.

A missing config, checkpoint or image, a checkpoint of another config or an image larger
than a static --shape stops before the export with one line naming it (exit code 1).
"""
import argparse
import os
import os.path as osp
import sys
import time
from typing import List, Sequence, Tuple

from ddetr.cli import add_cfg_options, add_trust_checkpoint, apply_trust_checkpoint, entry_point
from ddetr.errors import ConfigError

MIN_OPSET = 16  # GridSample (ddetr.deployment.MIN_OPSET, without importing torch for --help)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a ddetr detector to ONNX (static: input -> dets, labels; '
                    '--dynamic: input, img_shape -> dets, labels at any batch size) and '
                    'optionally check it against PyTorch with onnxruntime.',
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help="checkpoint file ('none': random weights drawn "
                        "with --seed, to try the export)")
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='input height and width (default: the test pipeline\'s Resize '
                             'scale); with --dynamic the example shape of the trace')
    parser.add_argument('--dynamic', action='store_true',
                        help='export the batch size, H and W as dynamic axes, with a second '
                             'input img_shape (N, 2) for padded batches')
    parser.add_argument('--opset', type=int, default=17,
                        help=f'ONNX opset (default 17, at least {MIN_OPSET} for GridSample)')
    parser.add_argument('--verify', action='store_true',
                        help='compare onnxruntime with PyTorch on the --image files')
    parser.add_argument('--image', nargs='+', default=None, metavar='IMG',
                        help='image files for --verify (with --dynamic, also run as one '
                             'padded batch)')
    parser.add_argument('--box-tol', type=float, default=1e-3,
                        help='--verify: largest allowed box difference in px (1e-3)')
    parser.add_argument('--score-tol', type=float, default=1e-4,
                        help='--verify: largest allowed score difference (1e-4)')
    parser.add_argument('--seed', type=int, default=0, help="seed of 'none' weights (0)")
    add_cfg_options(parser)
    add_trust_checkpoint(parser)
    args = parser.parse_args(argv)
    if args.opset < MIN_OPSET:
        parser.error(f'--opset {args.opset}: the deformable attention needs GridSample, '
                     f'opset {MIN_OPSET} or newer')
    if args.verify and not args.image:
        parser.error('--verify needs --image IMG [IMG ...]')
    if args.shape and min(args.shape) < 32:
        parser.error(f'--shape {args.shape[0]} {args.shape[1]}: H and W must be >= 32 '
                     f'(the backbone downsamples by 32)')
    return args


def prepared_images(model, images: Sequence[str]):
    """Each image file through the config's test pipeline and data preprocessor:
    [(1, 3, h, w)] float32 (ImageLoadError naming a missing or unreadable file)."""
    from ddetr.apis import build_test_pipeline, prepare_image
    pipeline = build_test_pipeline(model.cfg)
    return [prepare_image(model, image, pipeline)['inputs'].float() for image in images]


def verify_cases(model, images: Sequence[str], shape: Tuple[int, int], dynamic: bool
                 ) -> List[Tuple[str, object, List[Tuple[int, int]]]]:
    """[(what, inputs (bs, 3, H, W), img_shapes)] for --verify (see the module's doc).
    A static --shape too small for an image is a ConfigError, raised here, before the
    export."""
    from ddetr.deployment import pad_batch
    prepared = prepared_images(model, images)
    pad_value = float(getattr(model.data_preprocessor, 'pad_value', 0))
    if not dynamic:
        cases = []
        for path, inputs in zip(images, prepared):
            try:
                batch, _ = pad_batch([inputs], shape, pad_value)
            except ConfigError as e:
                raise ConfigError(f'--image {path}: {e}') from None
            cases.append((f'{osp.basename(path)} padded to the exported input', batch,
                          [tuple(shape)]))  # every pixel counts as image
        return cases
    cases = [(f'{osp.basename(path)} at its own size', inputs, [tuple(inputs.shape[-2:])])
             for path, inputs in zip(images, prepared)]
    largest = [max(x.shape[dim] for x in prepared) for dim in (2, 3)]
    padded = tuple((side // 32 + 1) * 32 for side in largest)
    batch, sizes = pad_batch(prepared, padded, pad_value)
    cases.append((f'batch of {len(prepared)} padded', batch, sizes))
    return cases


def verify(model, onnx_file: str, cases, box_tol: float, score_tol: float) -> bool:
    """Run onnxruntime and PyTorch on each case; print the largest differences per image;
    True when all are within the tolerances. A padded batch is also run image by image in
    onnxruntime (a batch of one of the same size), which must give the batch's rows."""
    import onnxruntime as ort

    from ddetr.deployment import compare, onnx_detections, pytorch_detections
    session = ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    ok = True

    def report(what, ref, got) -> bool:
        diff = compare(ref, got, score_tol)
        good = (diff['box_px'] <= box_tol and diff['score'] <= score_tol
                and diff['label_mismatches'] == 0)
        print(f'verify {what}: largest box difference {diff["box_px"]:.3g} px (tol '
              f'{box_tol:g}), score {diff["score"]:.3g} (tol {score_tol:g}), '
              f'{diff["label_mismatches"]} label mismatches: {"OK" if good else "FAILED"}',
              flush=True)
        return good

    for what, inputs, img_shapes in cases:
        size = tuple(inputs.shape[-2:])
        got = onnx_detections(session, inputs, img_shapes)
        refs = pytorch_detections(model, inputs, img_shapes)
        for i, (ref, out) in enumerate(zip(refs, got)):
            name = f'{what} {size}' if len(inputs) == 1 else \
                f'{what} {size}, image {i} {img_shapes[i]}'
            ok &= report(f'{name}, onnxruntime vs PyTorch', ref, out)
            if len(inputs) > 1:
                alone = onnx_detections(session, inputs[i:i + 1], img_shapes[i:i + 1])[0]
                ok &= report(f'{name}, batch vs alone', alone, out)
    return ok


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    apply_trust_checkpoint(args)
    import torch

    from ddetr.apis import init_detector
    from ddetr.deployment import check_two_stage_shape, default_shape, export_onnx
    model = init_detector(args.config, args.checkpoint, 'cpu', args.cfg_options,
                          seed=args.seed).float()
    shape = tuple(args.shape) if args.shape else default_shape(model.cfg)
    check_two_stage_shape(model, shape)
    # the images are read (and checked against a static shape) before the export
    cases = verify_cases(model, args.image, shape, args.dynamic) if args.verify else []
    start = time.time()
    print(f'exporting {args.config} ({args.checkpoint}) at {shape[0]}x{shape[1]}'
          f'{" (dynamic batch, H, W; inputs input, img_shape)" if args.dynamic else ""}, '
          f'opset {args.opset} ...', flush=True)
    torch.set_grad_enabled(False)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    export_onnx(model, args.out, shape, args.dynamic, args.opset)
    print(f'wrote {args.out} ({osp.getsize(args.out) / 2**20:.1f} MiB) in '
          f'{time.time() - start:.1f}s', flush=True)
    if args.verify and not verify(model, args.out, cases, args.box_tol, args.score_tol):
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
