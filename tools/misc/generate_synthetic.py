"""Generate (or reuse) the synthetic shapes dataset, print its statistics, and draw a
few samples with their boxes."""
import argparse
import json
import math
import os
import os.path as osp
import time
from collections import Counter

import cv2
import numpy as np

from ddetr.cli import entry_point
from ddetr.datasets.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, ensure_synthetic_coco
from ddetr.errors import DataError

EPILOG = """\
The folder gets train/, val/, annotations/instances_{train,val}.json (COCO format) and
synthetic_manifest.json. Running again with the same parameters reuses the folder;
different parameters regenerate it. A non-empty folder without a manifest is refused.

examples:
  python tools/misc/generate_synthetic.py data/synthetic_shapes
  python tools/misc/generate_synthetic.py data/synthetic_shapes --show 16 --show-out grid.png
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('root', nargs='?', default='data/synthetic_shapes',
                   help='dataset folder (default: %(default)s)')
    p.add_argument('--num-train', type=int, default=2000, help='train images (%(default)s)')
    p.add_argument('--num-val', type=int, default=200, help='val images (%(default)s)')
    p.add_argument('--seed', type=int, default=0, help='random seed (%(default)s)')
    p.add_argument('--min-side', type=int, default=160, help='smallest image side (%(default)s)')
    p.add_argument('--max-side', type=int, default=320, help='largest image side (%(default)s)')
    p.add_argument('--max-objects', type=int, default=10,
                   help='most objects per image (%(default)s)')
    p.add_argument('--min-visible', type=float, default=0.6,
                   help='fraction of each object left visible by occlusion (%(default)s)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.add_argument('--show', type=int, default=0, metavar='N',
                   help='draw the first N images of --show-split with their boxes')
    p.add_argument('--show-split', choices=('train', 'val'), default='val')
    p.add_argument('--show-out', default=None,
                   help='PNG file for --show (default: ROOT/samples_<split>.png)')
    return p.parse_args(argv)


def split_stats(coco: dict) -> str:
    """One-paragraph summary: images, objects per image, classes, COCO size ranges."""
    anns = coco['annotations']
    areas = np.array([a['area'] for a in anns], dtype=np.float64)
    per_image = Counter(a['image_id'] for a in anns)
    counts = [per_image.get(img['id'], 0) for img in coco['images']]
    names = {c['id']: c['name'] for c in coco['categories']}
    classes = Counter(names[a['category_id']] for a in anns)
    n = max(len(anns), 1)
    sizes = (f'small {np.mean(areas < 32 ** 2) * 100:.0f}%, '
             f'medium {np.mean((areas >= 32 ** 2) & (areas < 96 ** 2)) * 100:.0f}%, '
             f'large {np.mean(areas >= 96 ** 2) * 100:.0f}%') if len(anns) else 'no boxes'
    return (f"{len(coco['images'])} images, {len(anns)} objects "
            f'({min(counts, default=0)}-{max(counts, default=0)} per image, '
            f'mean {np.mean(counts) if counts else 0:.1f}); sizes: {sizes}; classes: ' +
            ', '.join(f'{c} {classes[c] / n * 100:.0f}%' for c in SYNTHETIC_CLASSES))


def draw_grid(coco: dict, img_dir: str, num: int, cell: int = 320) -> np.ndarray:
    """The first ``num`` images with their boxes and class names, as one BGR picture."""
    by_image = {}
    for ann in coco['annotations']:
        by_image.setdefault(ann['image_id'], []).append(ann)
    names = {c['id']: c['name'] for c in coco['categories']}
    tiles = []
    for info in coco['images'][:num]:
        img = cv2.imread(osp.join(img_dir, info['file_name']), cv2.IMREAD_COLOR)
        for ann in by_image.get(info['id'], []):
            x, y, w, h = (int(round(v)) for v in ann['bbox'])
            r, g, b = SYNTHETIC_PALETTE[ann['category_id'] - 1]
            cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), (b, g, r), 1)
            cv2.putText(img, names[ann['category_id']], (x, max(y - 2, 8)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.35, (b, g, r), 1, cv2.LINE_AA)
        tile = np.full((cell, cell, 3), 32, dtype=np.uint8)
        scale = min(cell / img.shape[0], cell / img.shape[1], 1.0)
        img = cv2.resize(img, None, fx=scale, fy=scale) if scale < 1 else img
        tile[:img.shape[0], :img.shape[1]] = img
        tiles.append(tile)
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    tiles += [np.full_like(tiles[0], 32)] * (rows * cols - len(tiles))
    return np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1)
                           for r in range(rows)], axis=0)


@entry_point
def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    paths = ensure_synthetic_coco(
        args.root, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
        min_side=args.min_side, max_side=args.max_side, max_objects=args.max_objects,
        min_visible=args.min_visible, progress=not args.quiet)
    print(f'dataset ready in {paths.root} ({time.perf_counter() - start:.1f} s)')
    for split, ann_file in (('train', paths.train_ann_file), ('val', paths.val_ann_file)):
        with open(ann_file) as f:
            print(f'{split}: {split_stats(json.load(f))}')
    if args.show > 0:
        split = args.show_split
        with open(getattr(paths, f'{split}_ann_file')) as f:
            coco = json.load(f)
        if not coco['images']:
            raise DataError(f'no {split} images to show')
        out = args.show_out or osp.join(paths.root, f'samples_{split}.png')
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        cv2.imwrite(out, draw_grid(coco, getattr(paths, f'{split}_img_dir'), args.show))
        print(f'wrote {out}')


if __name__ == '__main__':
    main()
