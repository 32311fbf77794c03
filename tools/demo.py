"""Detections of a ddetr checkpoint drawn on an image (or on every image of a folder): a
command over :class:`ddetr.apis.DetInferencer`.

    python tools/demo.py demo.jpg configs/ddetr_r50.py ckpt.pth --out demo_pred.jpg
    python tools/demo.py images/ CONFIG CKPT --out predictions/ --score-thr 0.5
    python tools/demo.py images/ CONFIG ckpt.safetensors --out-dir outputs --batch-size 4

--out writes each drawn image to the given file (a folder for a folder of images, same
names); --out-dir writes as MMDetection's demo/image_demo.py does: the pictures to
OUT_DIR/vis/<name> and, unless --no-save-pred, the detections (labels, scores, boxes in
image pixels) to OUT_DIR/preds/<name>.json. Without either, --out-dir outputs.

The model is built from the config, the checkpoint loaded (.pth in mmengine format or a
bare state dict, or .safetensors; it must fit the config), each image run through the
config's test pipeline and the boxes with score >= --score-thr drawn on the original image
with their class names and scores. Class names come from the checkpoint's dataset_meta,
else from the config's dataset.

A missing image, a folder without images or a checkpoint that is missing, unreadable or
does not fit stops with one line naming it. In a folder, unreadable images are reported
and skipped (the exit status is then 1).
"""
import argparse
import os.path as osp
import sys
from typing import List

import mmcv
import numpy as np

from ddetr.apis import DetInferencer
from ddetr.cli import add_cfg_options, add_trust_checkpoint, apply_trust_checkpoint, entry_point
from ddetr.errors import ConfigError

PALETTES = ('none', 'random', 'coco', 'voc', 'citys')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw the detections of a ddetr checkpoint on an image or a folder of '
                    'images.', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', metavar='IMAGE', help='image file, or a folder of images')
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help="checkpoint file, .pth or .safetensors ('none': "
                        "random weights, to try the pipeline)")
    parser.add_argument('--out', help='output image file (a folder when IMAGE is a folder)')
    parser.add_argument('--out-dir', help='write OUT_DIR/vis/<name> and OUT_DIR/preds/'
                        '<name>.json (default when --out is not given: outputs)')
    parser.add_argument('--score-thr', '--pred-score-thr', dest='score_thr', type=float,
                        default=0.3, help='draw boxes with at least this score (default 0.3)')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward pass (default 1; images of another '
                        'network-input size run apart, so the detections do not change)')
    parser.add_argument('--device', default='cpu', help='device to run on (default cpu)')
    parser.add_argument('--palette', choices=PALETTES, default='none',
                        help="box colours (default 'none': the checkpoint's dataset "
                        "palette, else random)")
    parser.add_argument('--no-save-vis', action='store_true',
                        help='do not write the pictures under --out-dir')
    parser.add_argument('--no-save-pred', action='store_true',
                        help='do not write the JSON detections under --out-dir')
    parser.add_argument('--print-result', action='store_true',
                        help='print each image\'s detections (labels, scores, boxes)')
    add_cfg_options(parser)
    add_trust_checkpoint(parser)
    args = parser.parse_args(argv)
    if args.out is None and args.out_dir is None:
        args.out_dir = 'outputs'
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
    return args


def out_files(inputs: str, images: List[str], out: str) -> List[str]:
    """Where --out puts each drawn image: the file itself for one image (inside it when it
    is a folder), the same name inside it for a folder of images."""
    if osp.isdir(inputs):
        if osp.isfile(out):
            raise ConfigError(f'--out {out} is a file, but IMAGE {inputs} is a folder: give '
                              f'a folder')
        return [osp.join(out, osp.basename(image)) for image in images]
    return [osp.join(out, osp.basename(images[0])) if osp.isdir(out) else out]


def summary(prediction: dict, classes, score_thr: float) -> str:
    """'3 detections >= 0.3: circle 0.91, ring 0.55, ...' (the first five)."""
    kept = [(label, score) for label, score in zip(prediction['labels'], prediction['scores'])
            if score >= score_thr]
    found = ', '.join(f'{classes[label]} {score:.2f}' for label, score in kept[:5])
    more = f' (+{len(kept) - 5} more)' if len(kept) > 5 else ''
    return f'{len(kept)} detections >= {score_thr}' + (f': {found}{more}' if found else '')


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    apply_trust_checkpoint(args)
    images = DetInferencer.inputs_to_list(args.inputs)  # a missing path stops here
    targets = out_files(args.inputs, images, args.out) if args.out else [None] * len(images)
    palette = None if args.palette == 'none' else args.palette
    inferencer = DetInferencer(args.config, args.checkpoint, args.device, palette,
                               cfg_options=args.cfg_options)
    classes = inferencer.dataset_meta['classes']
    out_dir = args.out_dir or ''
    failed = []
    for start in range(0, len(images), args.batch_size):
        chunk = images[start:start + args.batch_size]
        result = inferencer(chunk, batch_size=args.batch_size, return_vis=bool(args.out),
                            pred_score_thr=args.score_thr, out_dir=out_dir,
                            no_save_vis=args.no_save_vis, no_save_pred=args.no_save_pred,
                            print_result=args.print_result, skip_unreadable=len(images) > 1)
        for skipped in result.get('skipped', []):
            print(f'warning: {skipped["error"]}; skipped', file=sys.stderr)
        unread = {skipped['index'] for skipped in result.get('skipped', [])}
        failed += [chunk[i] for i in sorted(unread)]
        done = [(start + i, image) for i, image in enumerate(chunk) if i not in unread]
        pictures = result['visualization'] or [None] * len(done)
        for (i, image), prediction, picture in zip(done, result['predictions'], pictures):
            written = []
            if targets[i]:
                mmcv.imwrite(np.ascontiguousarray(picture[..., ::-1]), targets[i])
                written.append(targets[i])
            if out_dir and not args.no_save_vis:
                written.append(osp.join(out_dir, 'vis', osp.basename(image)))
            print(f'[{i + 1}/{len(images)}] {image}: '
                  f'{summary(prediction, classes, args.score_thr)}'
                  + (f' -> {", ".join(written)}' if written else ''), flush=True)
    if failed:
        print(f'{len(failed)} image(s) could not be read: {", ".join(failed)}',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
