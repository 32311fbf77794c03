"""Check a COCO-format annotation file and its image folder before training.

    python tools/misc/check_dataset.py ANN_FILE IMG_DIR
    python tools/misc/check_dataset.py ANN_FILE IMG_DIR --show 8 --out work_dirs/shown

e.g. ANN_FILE data/my_data/annotations/train.json, IMG_DIR data/my_data/images/train/.

Counts images, boxes and instances per class, and lists the problems: images that are
missing or unreadable, images whose size differs from the file's width/height, boxes
that are empty (w or h <= 0), degenerate (not 4 finite numbers), or outside the image,
annotations of undeclared category ids or unknown image ids, and duplicate ids.
Exit status: 0 when training can use the data (warnings only), 1 when something would
break it or silently lose boxes (errors), 2 when the annotation file cannot be read.
--show N draws the boxes of the first N images into --out (mmdet's visualizer).
"""
import argparse
import json
import math
import os.path as osp
import sys
from collections import Counter, defaultdict

from ddetr.cli import entry_point
from ddetr.errors import DataError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Check a COCO-format annotation file and its images.', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('ann_file', help='COCO annotation json')
    parser.add_argument('img_dir', help='the folder the images\' file_name are relative to')
    parser.add_argument('--show', type=int, default=0, metavar='N',
                        help='draw the boxes of the first N images')
    parser.add_argument('--out', default='work_dirs/check_dataset', metavar='DIR',
                        help='where --show writes the images (default: %(default)s)')
    parser.add_argument('--max-listed', type=int, default=20, metavar='K',
                        help='list at most K entries per problem (default: %(default)s)')
    return parser.parse_args(argv)


def read_image_size(path):
    """(height, width) of the image at path, or None when it cannot be decoded."""
    import cv2
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    return img.shape[:2]


def check(coco: dict, img_dir: str):
    """Counts and problems of a loaded COCO dict. Returns (stats, errors, warnings) with
    errors and warnings dicts {problem: [entries]}."""
    errors, warnings = defaultdict(list), defaultdict(list)
    categories = {c['id']: c.get('name', str(c['id'])) for c in coco.get('categories', [])}
    if not categories:
        errors['no categories declared'].append('the file has no "categories"')
    images = {}
    for img in coco.get('images', []):
        if img.get('id') in images:
            errors['duplicate image ids'].append(str(img.get('id')))
        images[img.get('id')] = img
    sizes = {}
    for img_id, img in images.items():
        name = img.get('file_name')
        path = osp.join(img_dir, name or '')
        if not name or not osp.isfile(path):
            errors['missing images'].append(f'{path} (image id {img_id})')
            continue
        size = read_image_size(path)
        if size is None:
            errors['unreadable images'].append(f'{path} (image id {img_id})')
            continue
        sizes[img_id] = size
        if (img.get('height'), img.get('width')) != tuple(size):
            warnings['image size differs from the file\'s width/height'].append(
                f'{path}: {size[1]}x{size[0]} on disk, {img.get("width")}x{img.get("height")} '
                f'in the file')
    per_class, boxes, ann_ids = Counter(), 0, set()
    images_with_boxes = set()
    for ann in coco.get('annotations', []):
        where = f'annotation id {ann.get("id")} (image id {ann.get("image_id")})'
        if ann.get('id') in ann_ids:
            errors['duplicate annotation ids'].append(where)
        ann_ids.add(ann.get('id'))
        if ann.get('category_id') not in categories:
            errors['undeclared category ids'].append(f'{where}: category_id '
                                                     f'{ann.get("category_id")}')
            continue
        if ann.get('image_id') not in images:
            errors['annotations of unknown image ids'].append(where)
            continue
        bbox = ann.get('bbox')
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
            errors['degenerate boxes (not 4 finite numbers)'].append(f'{where}: {bbox!r}')
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            warnings['empty boxes (w or h <= 0, dropped in training)'].append(
                f'{where}: {bbox}')
            continue
        img = images[ann['image_id']]
        height, width = sizes.get(ann['image_id'], (img.get('height'), img.get('width')))
        if width and height and (x < 0 or y < 0 or x + w > width + 1 or y + h > height + 1):
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                errors['boxes entirely outside the image'].append(
                    f'{where}: {bbox} in {width}x{height}')
            else:
                warnings['boxes partly outside the image (clipped in training)'].append(
                    f'{where}: {bbox} in {width}x{height}')
        boxes += 1
        if not ann.get('iscrowd', 0):
            per_class[categories[ann['category_id']]] += 1
        images_with_boxes.add(ann['image_id'])
    unused = [name for cid, name in categories.items() if not per_class[name]]
    if unused and categories:
        warnings['declared categories without instances'].extend(unused)
    stats = dict(images=len(images), images_without_boxes=len(set(images) - images_with_boxes),
                 boxes=boxes, categories=len(categories),
                 instances_per_class={name: per_class[name] for name in categories.values()})
    return stats, errors, warnings


def show(coco: dict, img_dir: str, num: int, out_dir: str) -> list:
    """Draw the boxes of the first ``num`` readable images into out_dir; returns the paths."""
    import mmcv
    import numpy as np
    import torch
    from mmdet.visualization import DetLocalVisualizer
    from mmengine.structures import InstanceData
    categories = [c['name'] for c in coco.get('categories', [])]
    index = {c['id']: i for i, c in enumerate(coco.get('categories', []))}
    per_image = defaultdict(list)
    for ann in coco.get('annotations', []):
        per_image[ann.get('image_id')].append(ann)
    visualizer = DetLocalVisualizer(name='check_dataset')
    visualizer.dataset_meta = dict(classes=categories)
    written = []
    for img in coco.get('images', []):
        if len(written) >= num:
            break
        path = osp.join(img_dir, img.get('file_name', ''))
        if not osp.isfile(path) or read_image_size(path) is None:
            continue
        image = mmcv.imread(path, channel_order='rgb')
        anns = [a for a in per_image[img['id']] if a.get('category_id') in index
                and isinstance(a.get('bbox'), list) and len(a['bbox']) == 4]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)],
                         dtype=np.float32).reshape(-1, 4)
        gt = InstanceData(bboxes=torch.from_numpy(boxes),
                          labels=torch.tensor([index[a['category_id']] for a in anns],
                                              dtype=torch.long))
        from mmdet.structures import DetDataSample
        sample = DetDataSample()
        sample.gt_instances = gt
        out_file = osp.join(out_dir, osp.basename(path))
        visualizer.add_datasample(osp.basename(path), image, data_sample=sample,
                                  draw_pred=False, show=False, out_file=out_file)
        written.append(out_file)
    return written


@entry_point(status=2)
def main(argv=None):
    args = parse_args(argv)
    try:
        with open(args.ann_file) as f:
            coco = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f'cannot read {args.ann_file}: {e}') from None
    if not isinstance(coco, dict) or 'images' not in coco:
        raise DataError(f'{args.ann_file} is not a COCO detection file (no "images")')
    if not osp.isdir(args.img_dir):
        raise DataError(f'image folder {args.img_dir} does not exist')
    stats, errors, warnings = check(coco, args.img_dir)
    print(f'{args.ann_file}: {stats["images"]} images ({stats["images_without_boxes"]} '
          f'without boxes), {stats["boxes"]} boxes, {stats["categories"]} categories')
    width = max([len(n) for n in stats['instances_per_class']] + [5])
    print(f'{"class":<{width}}  instances')
    for name, count in stats['instances_per_class'].items():
        print(f'{name:<{width}}  {count}')
    for level, problems in (('WARNING', warnings), ('ERROR', errors)):
        for problem, entries in problems.items():
            print(f'{level}: {len(entries)} {problem}:')
            for entry in entries[:args.max_listed]:
                print(f'  {entry}')
            if len(entries) > args.max_listed:
                print(f'  ... and {len(entries) - args.max_listed} more')
    if args.show:
        written = show(coco, args.img_dir, args.show, args.out)
        print(f'drew {len(written)} images with their boxes into {args.out}')
    if errors:
        print(f'check_dataset: {sum(len(e) for e in errors.values())} errors: fix them '
              f'before training', file=sys.stderr)
        return 1
    print('OK: the data can be trained on' + (' (see the warnings)' if warnings else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
