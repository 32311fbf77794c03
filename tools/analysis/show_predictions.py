"""Draw ground truth next to predictions for the first images of a config's test set, as
one picture: each image appears twice, ground-truth boxes on the left and the model's
detections (score >= --score-thr) on the right, labelled with class (and score).

    python tools/analysis/show_predictions.py CONFIG CHECKPOINT --out grid.png
    python tools/analysis/show_predictions.py CONFIG CHECKPOINT --num-images 12 --score-thr 0.5
"""
import argparse
import os
import os.path as osp

import cv2
import numpy as np

from ddetr.apis import build_test_pipeline, inference_detector, init_detector
from ddetr.cli import entry_point
from ddetr.datasets.transforms.loading import load_image
from ddetr.errors import DataError
from ddetr.registry import DATASETS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Ground truth vs predictions on a few test images, as one picture.',
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', default='predictions.png', help='output picture (PNG/JPG)')
    parser.add_argument('--num-images', type=int, default=8, help='test images to draw')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw detections scoring at least this')
    parser.add_argument('--columns', type=int, default=2,
                        help='image pairs per row of the picture')
    return parser.parse_args(argv)


def _colour(label):
    """A fixed, distinct BGR colour per class index."""
    hue = (label * 47) % 180
    hsv = np.uint8([[[hue, 200, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw_boxes(img, boxes, labels, classes, scores=None):
    """Boxes (x1, y1, x2, y2) in image pixels with their class (and score) on a copy of img."""
    img = img.copy()
    for i, (box, label) in enumerate(zip(boxes, labels)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = _colour(int(label))
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
        text = classes[int(label)] + ('' if scores is None else f' {scores[i]:.2f}')
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        ty = max(y1, th + 2)
        cv2.rectangle(img, (x1, ty - th - 2), (x1 + tw + 2, ty), colour, -1)
        cv2.putText(img, text, (x1 + 1, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return img


def _titled(img, title, height):
    """img padded to `height` with a title bar on top."""
    bar = np.full((18, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    pad = np.full((height - img.shape[0], img.shape[1], 3), 255, np.uint8)
    return np.concatenate([bar, img, pad])


def make_grid(pairs, columns):
    """pairs: [(gt_image, pred_image, name)] -> one BGR picture, `columns` pairs per row."""
    height = max(p[0].shape[0] for p in pairs)
    tiles = []
    for gt, pred, name in pairs:
        gap = np.full((height + 18, 4, 3), 255, np.uint8)
        tiles.append(np.concatenate([_titled(gt, f'{name}: ground truth', height), gap,
                                     _titled(pred, 'prediction', height), gap, gap], 1))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.concatenate([t, np.full((t.shape[0], width - t.shape[1], 3), 255, np.uint8)], 1)
             for t in tiles]
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.concatenate(tiles[i:i + columns], 1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, 0)


@entry_point
def main(argv=None):
    args = parse_args(argv)
    model = init_detector(args.config, args.checkpoint)
    try:
        dataset = DATASETS.build(model.cfg.test_dataloader.dataset)
    except FileNotFoundError as err:  # the annotation file under the config's data_root
        raise DataError(f'{err} (check test_dataloader.dataset in {args.config})') from None
    classes = dataset.metainfo['classes']
    pipeline = build_test_pipeline(model.cfg)  # once, for every image

    pairs = []
    for index in range(min(args.num_images, len(dataset))):
        info = dataset.get_data_info(index)
        img = load_image(info['img_path'])
        sample = inference_detector(model, img, pipeline)
        gt = [(inst['bbox'], inst['bbox_label']) for inst in info['instances']
              if not inst.get('ignore_flag', 0)]
        pred = sample.pred_instances
        keep = pred.scores >= args.score_thr
        pairs.append((
            draw_boxes(img, [b for b, _ in gt], [lbl for _, lbl in gt], classes),
            draw_boxes(img, pred.bboxes[keep].tolist(), pred.labels[keep].tolist(), classes,
                       pred.scores[keep].tolist()),
            osp.basename(info['img_path'])))
    if not pairs:
        raise DataError(f'the test set of {args.config} is empty')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    if not cv2.imwrite(args.out, make_grid(pairs, args.columns)):
        raise DataError(f'could not write {args.out} (a .png or .jpg file in a writable folder)')
    print(f'wrote {args.out} ({len(pairs)} images, score >= {args.score_thr})')


if __name__ == '__main__':
    main()
