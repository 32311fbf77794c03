"""Detections of an exported ddetr ONNX model drawn on an image, or on every image of a
folder in batches, with onnxruntime, numpy and OpenCV (no torch, no mmdet/mmengine; of
ddetr only its dependency-free command-line helpers): it runs without the training stack.

    python tools/deployment/onnx_demo.py model.onnx demo.jpg --out result.jpg
    python tools/deployment/onnx_demo.py model.onnx images/ --out results/ --batch-size 4

The preparation follows the metadata tools/deployment/export_onnx.py stored in the model
(the config's test pipeline and data preprocessor): resize as mmdet's Resize (keep_ratio:
the long side to the longer scale, the short side at most the shorter, bilinear), BGR ->
RGB, (x - mean) / std, then padded bottom/right with the pad value: to the exported input
size (static export, batches of one), or, for a model exported with --dynamic, to the
largest image of each batch of --batch-size (rounded up to the data preprocessor's
pad_size_divisor), whose valid sizes are fed as the model's img_shape input: each image
gets the detections ddetr gives it in PyTorch in the same batch. The boxes are mapped back
to the original image and drawn with their class and score.

A missing or unreadable model or image, a model without ddetr's metadata, an image larger
than a static model's input or a --batch-size a static model cannot take stops with one
line naming it (exit code 1). In a folder, unreadable images are reported and skipped (the
exit code is then 1).
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import onnxruntime as ort

from ddetr.cli import entry_point
from ddetr.errors import CheckpointError, ConfigError, ImageLoadError

REQUIRED_KEYS = ('mean', 'std', 'bgr_to_rgb', 'input_shape', 'dynamic', 'resize', 'classes')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw the detections of an exported ddetr ONNX model on an image or a '
                    'folder of images (onnxruntime only).', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='.onnx file written by tools/deployment/export_onnx.py')
    parser.add_argument('image', help='image file, or a folder of images')
    parser.add_argument('--out', required=True,
                        help='output image file (a folder when IMAGE is a folder)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw boxes with at least this score (default 0.3)')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per run (default 1; more needs a model exported with '
                             '--dynamic)')
    parser.add_argument('--threads', type=int, default=0,
                        help='onnxruntime intra-op threads (default 0: its own choice)')
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size {args.batch_size}: must be >= 1')
    return args


class InputLayout(NamedTuple):
    """The model's ``input`` axes (None: dynamic) and whether it takes ``img_shape``."""
    batch: Optional[int]
    height: Optional[int]
    width: Optional[int]
    with_img_shape: bool


def load_model(path: str, threads: int = 0) -> Tuple[ort.InferenceSession, Dict, InputLayout]:
    """An onnxruntime CPU session on ``path`` (``threads`` intra-op threads, 0: its
    default), its metadata and input layout (CheckpointError naming the file when it is
    missing, not ONNX or not ddetr's)."""
    if not osp.isfile(path):
        raise CheckpointError(f'model file {path} does not exist')
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as e:  # onnxruntime's own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'could not load {path} as an ONNX model: {first}') from None
    return session, read_metadata(session, path), input_layout(session, path)


def read_metadata(session: ort.InferenceSession, path: str) -> Dict:
    props = session.get_modelmeta().custom_metadata_map
    missing = [k for k in REQUIRED_KEYS if k not in props]
    if missing:
        raise CheckpointError(f'{path} has no {", ".join(missing)} in its metadata_props: '
                              f'export it with tools/deployment/export_onnx.py')
    optional = ('pad_value', 'pad_size_divisor')
    return {k: json.loads(props[k]) for k in REQUIRED_KEYS + optional if k in props}


def input_layout(session: ort.InferenceSession, path: str) -> InputLayout:
    inputs = {i.name: i for i in session.get_inputs()}
    if 'input' not in inputs or len(inputs['input'].shape) != 4:
        raise CheckpointError(f'{path} has no input named "input" of 4 axes: export it with '
                              f'tools/deployment/export_onnx.py')
    batch, _, height, width = (d if isinstance(d, int) else None
                               for d in inputs['input'].shape)
    return InputLayout(batch, height, width, 'img_shape' in inputs)


def list_images(path: str, out: str) -> List[Tuple[str, str]]:
    """(input image, output file) pairs: one image, or every image file of a folder."""
    if osp.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ImageLoadError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in folder '
                                 f'{path}')
        if osp.isfile(out):
            raise ConfigError(f'--out {out} is a file, but IMAGE {path} is a folder: give a '
                              f'folder')
        return [(osp.join(path, n), osp.join(out, n)) for n in names]
    if not osp.exists(path):
        raise ImageLoadError(f'image file not found: {path}')
    if osp.isdir(out):
        return [(path, osp.join(out, osp.basename(path)))]
    return [(path, out)]


def read_image(path: str) -> np.ndarray:
    """uint8 (h, w, 3) BGR (ImageLoadError naming the file)."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageLoadError(f'cannot decode image file {path} (corrupt or not an image)')
    return img


def rescaled_size(height: int, width: int, resize) -> Tuple[int, int]:
    """(new_h, new_w) as mmdet's Resize: ``resize`` = dict(scale=(w, h), keep_ratio) or
    None (no Resize: the image as it is)."""
    if not resize or not resize.get('scale'):
        return height, width
    scale_w, scale_h = resize['scale']
    if not resize.get('keep_ratio'):
        return int(scale_h), int(scale_w)
    factor = min(max(scale_w, scale_h) / max(height, width),
                 min(scale_w, scale_h) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def prepare(img_bgr: np.ndarray, meta: Dict) -> Tuple[np.ndarray, Tuple[float, float]]:
    """uint8 (h, w, 3) BGR -> ((3, new_h, new_w) float32 network input, not padded,
    (scale_w, scale_h) = resized / original size)."""
    height, width = img_bgr.shape[:2]
    new_h, new_w = rescaled_size(height, width, meta['resize'])
    img = img_bgr
    if (new_h, new_w) != (height, width):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    img = img.astype(np.float32)
    if meta['bgr_to_rgb']:
        img = img[..., ::-1]
    img = (img - np.float32(meta['mean'])) / np.float32(meta['std'])
    return np.ascontiguousarray(img.transpose(2, 0, 1)), (new_w / width, new_h / height)


def make_batch(images: Sequence[np.ndarray], meta: Dict,
               layout: InputLayout) -> Tuple[np.ndarray, np.ndarray]:
    """Prepared (3, h, w) images -> ((bs, 3, H, W) padded bottom/right, img_shape (bs, 2)
    int64 valid (h, w) of each). (H, W): the model's fixed input size, else the largest
    image's rounded up to the pad_size_divisor. ConfigError when the model cannot take
    the batch (its batch size, or an image larger than its fixed input)."""
    if layout.batch is not None and len(images) != layout.batch:
        raise ConfigError(f'the model takes batches of {layout.batch} (exported without '
                          f'--dynamic), not {len(images)}: use --batch-size {layout.batch}, or '
                          f'export with --dynamic')
    sizes = np.int64([img.shape[1:] for img in images])  # (bs, 2)
    divisor = int(meta.get('pad_size_divisor', 1))
    height, width = (-(-sizes.max(0) // divisor) * divisor).tolist()
    height, width = layout.height or height, layout.width or width
    for h, w in sizes.tolist():
        if h > height or w > width:
            raise ConfigError(f'a resized image is {h}x{w}, larger than the model input '
                              f'{height}x{width}: export with a larger --shape, or --dynamic')
    if not layout.with_img_shape and len(images) > 1 and (sizes != sizes[0]).any():
        raise ConfigError('the model has no img_shape input (exported without --dynamic): '
                          'it cannot mask the padding of a batch of different sizes')
    batch = np.full((len(images), 3, height, width), meta.get('pad_value', 0.0), np.float32)
    for i, img in enumerate(images):
        batch[i, :, :img.shape[1], :img.shape[2]] = img
    return batch, sizes


def detect(session: ort.InferenceSession, imgs_bgr: Sequence[np.ndarray], meta: Dict,
           layout: InputLayout) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One run on a batch of images -> per image: boxes (N, 4) x1, y1, x2, y2 in
    original-image pixels, scores (N,), labels (N,)."""
    prepared = [prepare(img, meta) for img in imgs_bgr]
    batch, sizes = make_batch([x for x, _ in prepared], meta, layout)
    feed = dict(input=batch)
    if layout.with_img_shape:
        feed['img_shape'] = sizes
    dets, labels = session.run(['dets', 'labels'], feed)
    results = []
    for (_, (scale_w, scale_h)), dets_i, labels_i in zip(prepared, dets, labels):
        boxes = dets_i[:, :4] / np.float32([scale_w, scale_h, scale_w, scale_h])
        results.append((boxes, dets_i[:, 4], labels_i))
    return results


def draw(img_bgr: np.ndarray, boxes, scores, labels, classes: List[str]) -> np.ndarray:
    out = img_bgr.copy()
    for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
        hue = int(label) * 47 % 180
        color = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0].tolist()
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, color, 2)
        cv2.putText(out, f'{classes[int(label)]} {score:.2f}', (p1[0], max(p1[1] - 4, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    return out


def save(img_bgr, result, out: str, score_thr: float, classes: List[str], name: str) -> None:
    boxes, scores, labels = result
    keep = scores >= score_thr
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    if not cv2.imwrite(out, draw(img_bgr, boxes[keep], scores[keep], labels[keep], classes)):
        raise ImageLoadError(f'could not write {out}')
    found = ', '.join(f'{classes[int(label)]} {float(score):.2f}'
                      for label, score in zip(labels[keep][:5], scores[keep][:5]))
    print(f'{name}: {int(keep.sum())} detections >= {score_thr}'
          f'{": " + found if found else ""} -> {out}', flush=True)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    pairs = list_images(args.image, args.out)
    session, meta, layout = load_model(args.model, args.threads)
    if layout.batch is not None and args.batch_size != layout.batch:
        raise ConfigError(f'--batch-size {args.batch_size}: {args.model} takes batches of '
                          f'{layout.batch} (exported without --dynamic); export with '
                          f'--dynamic to run batches')
    folder = osp.isdir(args.image)
    failed = 0
    for start in range(0, len(pairs), args.batch_size):
        batch = []
        for path, out in pairs[start:start + args.batch_size]:
            try:
                batch.append((path, out, read_image(path)))
            except ImageLoadError as e:
                if not folder:
                    raise
                print(f'skipped: {e}', file=sys.stderr, flush=True)
                failed += 1
        if not batch:
            continue
        results = detect(session, [img for _, _, img in batch], meta, layout)
        for (path, out, img), result in zip(batch, results):
            save(img, result, out, args.score_thr, meta['classes'], path)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
