"""Detections of an exported ddetr ONNX model drawn on an image, with onnxruntime, numpy
and OpenCV only (no torch, no mmdet/mmengine): the file runs without the training stack.

    python tools/deployment/onnx_demo.py model.onnx demo.jpg --out result.jpg
    python tools/deployment/onnx_demo.py model.onnx demo.jpg --out result.jpg --score-thr 0.5

The preparation follows the metadata tools/deployment/export_onnx.py stored in the model
(the config's test pipeline and data preprocessor): resize as mmdet's Resize (keep_ratio:
the long side to the longer scale, the short side at most the shorter, bilinear), BGR ->
RGB, (x - mean) / std, padded bottom/right to the exported input size (static export).
The boxes are mapped back to the original image and drawn with their class and score.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Tuple

import cv2
import numpy as np
import onnxruntime as ort

REQUIRED_KEYS = ('mean', 'std', 'bgr_to_rgb', 'input_shape', 'dynamic', 'resize', 'classes')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw the detections of an exported ddetr ONNX model on an image '
                    '(onnxruntime only).', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='.onnx file written by tools/deployment/export_onnx.py')
    parser.add_argument('image', help='image file')
    parser.add_argument('--out', required=True, help='output image file')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw boxes with at least this score (default 0.3)')
    return parser.parse_args(argv)


def read_metadata(session: ort.InferenceSession, path: str) -> Dict:
    props = session.get_modelmeta().custom_metadata_map
    missing = [k for k in REQUIRED_KEYS if k not in props]
    if missing:
        raise ValueError(f'{path} has no {", ".join(missing)} in its metadata_props: export '
                         f'it with tools/deployment/export_onnx.py')
    return {k: json.loads(props[k]) for k in REQUIRED_KEYS + ('pad_value',) if k in props}


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
    """uint8 (h, w, 3) BGR -> ((1, 3, H, W) float32 input, (scale_w, scale_h))."""
    height, width = img_bgr.shape[:2]
    new_h, new_w = rescaled_size(height, width, meta['resize'])
    img = img_bgr
    if (new_h, new_w) != (height, width):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    img = img.astype(np.float32)
    if meta['bgr_to_rgb']:
        img = img[..., ::-1]
    img = (img - np.float32(meta['mean'])) / np.float32(meta['std'])
    x = np.ascontiguousarray(img.transpose(2, 0, 1)[None])  # (1, 3, h, w)
    if not meta['dynamic']:
        in_h, in_w = meta['input_shape']
        if new_h > in_h or new_w > in_w:
            raise ValueError(f'the resized image is {new_h}x{new_w}, larger than the model '
                             f'input {in_h}x{in_w}')
        padded = np.full((1, 3, in_h, in_w), meta.get('pad_value', 0.0), np.float32)
        padded[:, :, :new_h, :new_w] = x
        x = padded
    return x, (new_w / width, new_h / height)


def detect(session: ort.InferenceSession, img_bgr: np.ndarray, meta: Dict):
    """-> boxes (N, 4) x1, y1, x2, y2 in original-image pixels, scores (N,), labels (N,)."""
    x, (scale_w, scale_h) = prepare(img_bgr, meta)
    dets, labels = session.run(['dets', 'labels'], {'input': x})
    boxes = dets[0, :, :4] / np.float32([scale_w, scale_h, scale_w, scale_h])
    return boxes, dets[0, :, 4], labels[0]


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


def main(argv=None) -> int:
    args = parse_args(argv)
    for path, what in ((args.model, 'model'), (args.image, 'image')):
        if not osp.isfile(path):
            print(f'error: {what} file {path} does not exist', file=sys.stderr)
            return 1
    img = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if img is None:
        print(f'error: image {args.image} could not be decoded', file=sys.stderr)
        return 1
    try:
        session = ort.InferenceSession(args.model, providers=['CPUExecutionProvider'])
        meta = read_metadata(session, args.model)
        boxes, scores, labels = detect(session, img, meta)
    except Exception as e:  # not an ONNX file, wrong metadata, image too large
        print(f'error: {e}', file=sys.stderr)
        return 1
    keep = scores >= args.score_thr
    classes = meta['classes']
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    if not cv2.imwrite(args.out, draw(img, boxes[keep], scores[keep], labels[keep], classes)):
        print(f'error: could not write {args.out}', file=sys.stderr)
        return 1
    found = ', '.join(f'{classes[int(label)]} {float(score):.2f}'
                      for label, score in zip(labels[keep][:5], scores[keep][:5]))
    print(f'{args.image}: {int(keep.sum())} detections >= {args.score_thr}'
          f'{": " + found if found else ""} -> {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
