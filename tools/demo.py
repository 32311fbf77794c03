"""Detections of a ddetr checkpoint drawn on an image (or on every image of a folder).

    python tools/demo.py demo.jpg configs/ddetr_r50.py ckpt.pth --out demo_pred.jpg
    python tools/demo.py images/ CONFIG CKPT --out predictions/ --score-thr 0.5

The model is built from the config, the checkpoint loaded (mmengine format or a bare
state dict; it must fit the config), the image run through the config's test pipeline
(resize...) and the boxes with score >= --score-thr drawn on the original image with their
class names and scores (mmdet's DetLocalVisualizer). Class names come from the
checkpoint's dataset_meta, else from the config's dataset.

A missing or corrupt image or checkpoint stops with a message naming the file. With a
folder, unreadable images are reported and skipped (the exit code is then 1).
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    from ddetr.utils import add_trust_checkpoint_argument
    parser = argparse.ArgumentParser(
        description='Draw the detections of a ddetr checkpoint on an image or a folder of '
                    'images.', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image', help='image file, or a folder of images')
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help="checkpoint file ('none': random weights, to "
                        "try the pipeline)")
    parser.add_argument('--out', required=True,
                        help='output image file (a folder when IMAGE is a folder)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw boxes with at least this score (default 0.3)')
    parser.add_argument('--device', default='cpu', help='device to run on (default cpu)')
    parser.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE', default=None,
                        help='override config keys')
    add_trust_checkpoint_argument(parser)
    return parser.parse_args(argv)


def list_images(path: str, out: str) -> List[Tuple[str, str]]:
    """(input image, output file) pairs: one image, or every image file of a folder."""
    if osp.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise FileNotFoundError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in '
                                    f'folder {path}')
        if osp.isfile(out):
            raise ValueError(f'--out {out} is a file, but IMAGE {path} is a folder: give a '
                             f'folder')
        return [(osp.join(path, n), osp.join(out, n)) for n in names]
    if not osp.exists(path):
        raise FileNotFoundError(f'image file not found: {path}')
    if osp.isdir(out):
        return [(path, osp.join(out, osp.basename(path)))]
    return [(path, out)]


def make_visualizer(dataset_meta: dict):
    from mmdet.visualization import DetLocalVisualizer
    name = f'ddetr_demo_{id(dataset_meta)}'
    visualizer = DetLocalVisualizer.get_instance(name)
    visualizer.dataset_meta = dataset_meta
    return visualizer


def draw_detections(visualizer, image_bgr, data_sample, out_file: str, score_thr: float):
    import warnings

    from ddetr.apis.inference import as_rgb
    directory = osp.dirname(osp.abspath(out_file))
    os.makedirs(directory, exist_ok=True)
    with warnings.catch_warnings():  # boxes touching the border are drawn all the same
        warnings.filterwarnings('ignore', message='.*out of bounds')
        visualizer.add_datasample(osp.basename(out_file), as_rgb(image_bgr), data_sample,
                                  draw_gt=False, show=False, out_file=out_file,
                                  pred_score_thr=score_thr)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ddetr.apis import (CheckpointError, build_test_pipeline, init_detector,
                            prepare_image)
    from ddetr.datasets.transforms.loading import ImageLoadError
    from ddetr.utils import apply_trust_checkpoint_argument
    apply_trust_checkpoint_argument(args)
    import torch
    try:
        jobs = list_images(args.image, args.out)
        model = init_detector(args.config, args.checkpoint, args.device, args.cfg_options)
        pipeline = build_test_pipeline(model.cfg)
    except (FileNotFoundError, CheckpointError, KeyError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    visualizer = make_visualizer(model.dataset_meta)
    classes = model.dataset_meta['classes']
    failed = []
    for i, (image, out_file) in enumerate(jobs, 1):
        try:
            batch = prepare_image(model, image, pipeline)
        except ImageLoadError as e:
            if len(jobs) == 1:
                print(f'error: {e}', file=sys.stderr)
                return 1
            print(f'warning: {e}; skipped', file=sys.stderr)
            failed.append(image)
            continue
        with torch.no_grad():
            result = model(batch['inputs'], batch['data_samples'], mode='predict')[0]
        draw_detections(visualizer, batch['img'], result, out_file, args.score_thr)
        pred = result.pred_instances
        keep = pred.scores >= args.score_thr
        found = ', '.join(f'{classes[int(label)]} {float(score):.2f}'
                          for label, score in zip(pred.labels[keep][:5], pred.scores[keep][:5]))
        more = f' (+{int(keep.sum()) - 5} more)' if int(keep.sum()) > 5 else ''
        print(f'[{i}/{len(jobs)}] {image}: {int(keep.sum())} detections >= {args.score_thr}'
              f'{": " + found + more if found else ""} -> {out_file}', flush=True)
    if failed:
        print(f'{len(failed)} image(s) could not be read: {", ".join(failed)}',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
