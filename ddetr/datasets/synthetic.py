"""A small, real detection task that needs no download: coloured shapes on cluttered
backgrounds, written once as a COCO-format dataset and then read like COCO.

Layout written under ``root``::

    root/synthetic_manifest.json          parameters + completion flag (reuse check)
    root/train/000000.jpg ...             train images
    root/val/000000.jpg ...               val images
    root/annotations/instances_train.json
    root/annotations/instances_val.json

Data contract of the annotation files (standard COCO detection):

- ``images``: ``id`` (1-based), ``file_name`` (relative to the split folder),
  ``width``, ``height``; sides are drawn independently from ``[min_side, max_side]``.
- ``categories``: ids 1..6 named after :data:`SYNTHETIC_CLASSES`.
- ``annotations``: ``bbox`` = ``[x, y, w, h]`` in pixels, the *full* extent of the
  shape even where later shapes cover it; ``area`` = ``w * h`` (so COCO's small /
  medium / large ranges follow the box size); ``iscrowd`` = 0.
- 1 to ``max_objects`` objects per image; each keeps at least ``min_visible`` of its
  own pixels visible after occlusion. About 18% of the boxes are small (< 32**2),
  half medium, a third large (see ``SIZE_MIX``).

Every image is drawn from its own RNG seeded with ``(seed, split, index)``, so the
output is the same byte for byte for the same parameters (and library versions), and
growing ``num_train`` keeps the existing images unchanged.
"""
import contextlib
import json
import os
import os.path as osp
import shutil
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np

from ddetr.errors import ConfigError, DataError

# Bump when the drawing changes, so that existing folders are regenerated.
GENERATOR_VERSION = 2
MANIFEST = 'synthetic_manifest.json'
SPLITS = ('train', 'val')

SYNTHETIC_CLASSES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring')
SYNTHETIC_PALETTE = [(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 180, 0),
                     (145, 30, 180), (0, 200, 200)]

# (probability, lower, upper) of sqrt(box area) in pixels: COCO small / medium / large.
SIZE_MIX = ((0.16, 14.0, 32.0), (0.52, 32.0, 96.0), (0.32, 96.0, 200.0))
MIN_SHAPE_SIDE = 8      # no box side below this many pixels
AA_SHIFT = 4            # sub-pixel bits for cv2's anti-aliased polygon fill


class SyntheticCocoPaths(NamedTuple):
    """Where :func:`ensure_synthetic_coco` put the dataset."""
    root: str
    train_img_dir: str
    val_img_dir: str
    train_ann_file: str
    val_ann_file: str


# --------------------------------------------------------------------------- shapes
def _circle(n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)  # [n, 2]


def _shape_contours(name: str, rng: np.random.Generator) -> List[np.ndarray]:
    """Contours of a unit-sized shape centred on the origin: the outline first, then
    holes (filled even-odd). Each contour is ``[n, 2]`` (x, y)."""
    if name == 'circle':
        return [_circle()]
    if name == 'square':
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)]
    if name == 'triangle':
        angles = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-12, 12, 3))
        return [np.stack([np.cos(angles), np.sin(angles)], axis=1)]
    if name == 'star':
        inner = rng.uniform(0.38, 0.5)
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)]
    if name == 'cross':
        a = rng.uniform(0.28, 0.4)  # half arm thickness
        return [np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1],
                          [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]])]
    if name == 'ring':
        return [_circle(), _circle() * rng.uniform(0.45, 0.6)]
    raise KeyError(f'unknown shape {name!r}')


# Rotation range (degrees) per class: squares and crosses stay roughly upright so that a
# rotated square does not read as a different (diamond) shape.
MAX_ROTATION = dict(circle=180, square=25, triangle=180, star=180, cross=25, ring=180)


def _place_shape(name: str, size: float, rng: np.random.Generator
                 ) -> Tuple[List[np.ndarray], float, float]:
    """Stretch (aspect ratio), rotate and scale a unit shape so that its box has
    ``sqrt(w * h) == size``. Returns contours in box coordinates ``[0, w] x [0, h]``
    and the box size ``(w, h)``."""
    contours = _shape_contours(name, rng)
    aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
    theta = np.deg2rad(rng.uniform(-MAX_ROTATION[name], MAX_ROTATION[name]))
    stretch = np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    contours = [(c * stretch) @ rot.T for c in contours]
    lo, hi = contours[0].min(0), contours[0].max(0)  # the outline bounds the shape
    extent = hi - lo
    scale = size / np.sqrt(extent[0] * extent[1])
    w, h = extent * scale
    if min(w, h) < MIN_SHAPE_SIDE:  # very elongated: widen the thin side
        scale_xy = np.maximum(np.array([w, h]), MIN_SHAPE_SIDE) / np.array([w, h])
        w, h = w * scale_xy[0], h * scale_xy[1]
        contours = [(c - lo) * scale * scale_xy for c in contours]
    else:
        contours = [(c - lo) * scale for c in contours]
    return contours, float(w), float(h)


def _render_mask(contours: List[np.ndarray], w: int, h: int) -> np.ndarray:
    """Anti-aliased coverage ``[h, w]`` in [0, 1] of contours given in box coordinates."""
    mask = np.zeros((h, w), dtype=np.uint8)
    # Map [0, w] onto the pixel centres 0..w-1 so the shape touches all four box sides.
    sx, sy = (w - 1) / max(w, 1e-6), (h - 1) / max(h, 1e-6)
    pts = [np.round(c * [sx, sy] * (1 << AA_SHIFT)).astype(np.int32) for c in contours]
    cv2.fillPoly(mask, pts, 255, lineType=cv2.LINE_AA, shift=AA_SHIFT)
    return mask.astype(np.float32) / 255.0


# ----------------------------------------------------------------------- backgrounds
def _random_colour(rng: np.random.Generator, sat=(0.45, 1.0), val=(0.35, 1.0)) -> np.ndarray:
    """A BGR colour from random hue, saturation and value, as float [3]."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]])
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient + low-frequency texture + clutter (thin lines, soft blobs), float [h, w, 3]."""
    c0 = _random_colour(rng, sat=(0.0, 0.6), val=(0.2, 0.95))
    c1 = _random_colour(rng, sat=(0.0, 0.6), val=(0.2, 0.95))
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.arange(w, dtype=np.float32)[None, :] * np.cos(angle) +
         np.arange(h, dtype=np.float32)[:, None] * np.sin(angle))  # [h, w]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0 + (c1 - c0) * t[..., None]  # [h, w, 3]

    # Low-frequency texture: a coarse random grid, upsampled smoothly.
    grid = rng.normal(0, 1, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
    texture = cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img += texture * rng.uniform(8, 30)

    # Soft blobs, drawn and blurred at 1/4 resolution: they stay blurry and faint,
    # unlike the crisp objects.
    sw, sh = max(w // 4, 1), max(h // 4, 1)
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    clutter = small.copy()
    for _ in range(int(rng.integers(0, 5))):
        centre = (int(rng.integers(0, sw)), int(rng.integers(0, sh)))
        axes = (int(rng.integers(2, max(sw // 3, 3))), int(rng.integers(2, max(sh // 3, 3))))
        cv2.ellipse(clutter, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                    _random_colour(rng).tolist(), -1, cv2.LINE_AA)
    clutter = cv2.GaussianBlur(clutter, (0, 0), rng.uniform(1.5, 3.0))
    delta = cv2.resize(clutter - small, (w, h), interpolation=cv2.INTER_LINEAR)
    img += delta * rng.uniform(0.2, 0.45)
    for _ in range(int(rng.integers(0, 9))):  # thin lines
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p0, p1, _random_colour(rng).tolist(), int(rng.integers(1, 3)),
                 cv2.LINE_AA)
    return img


# ---------------------------------------------------------------------------- images
def _sample_size(rng: np.random.Generator, max_size: float) -> float:
    probs = np.array([p for p, _, _ in SIZE_MIX])
    _, lo, hi = SIZE_MIX[int(rng.choice(len(SIZE_MIX), p=probs / probs.sum()))]
    hi = min(hi, max_size)
    if hi <= lo:  # this image is too small for the drawn range: largest that fits
        return max_size * rng.uniform(0.85, 1.0)
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _num_objects(rng: np.random.Generator, max_objects: int) -> int:
    """1..max_objects, fewer more often (mean about 4 for 10)."""
    n = np.arange(1, max_objects + 1)
    p = n ** -0.7
    return int(rng.choice(n, p=p / p.sum()))


def render_image(rng: np.random.Generator, min_side: int = 160, max_side: int = 320,
                 max_objects: int = 10, min_visible: float = 0.6
                 ) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image. Returns the BGR uint8 image ``[h, w, 3]`` and its objects in
    drawing order (later ones lie on top), each ``dict(label=class index,
    bbox=[x, y, w, h], visible=fraction of its own pixels left uncovered)``."""
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    img = _background(rng, h, w)
    top = np.zeros((h, w), dtype=np.int16)  # index+1 of the object visible at each pixel
    visible: List[int] = []  # visible pixel count per placed object
    full: List[int] = []     # own pixel count per placed object
    objects = []

    n = _num_objects(rng, max_objects)
    sizes = sorted((_sample_size(rng, 0.9 * min(h, w)) for _ in range(n)),
                   key=lambda s: -s * rng.uniform(0.7, 1.3))  # mostly big first
    for size in sizes:
        label = int(rng.integers(len(SYNTHETIC_CLASSES)))
        for _ in range(25):  # placement attempts
            contours, fw, fh = _place_shape(SYNTHETIC_CLASSES[label], size, rng)
            bw, bh = int(np.ceil(fw)), int(np.ceil(fh))
            if bw > w - 2 or bh > h - 2:
                size *= 0.9
                continue
            contours = [c * [bw / fw, bh / fh] for c in contours]  # whole-pixel box, tight
            x0, y0 = int(rng.integers(1, w - bw)), int(rng.integers(1, h - bh))
            alpha = _render_mask(contours, bw, bh)
            own = alpha > 0.5
            region = top[y0:y0 + bh, x0:x0 + bw]
            covered = np.bincount(region[own], minlength=len(visible) + 1)[1:]
            if any(v - c < min_visible * f for v, c, f in zip(visible, covered, full)):
                continue  # would hide too much of an earlier object
            visible = [v - c for v, c in zip(visible, covered)]
            visible.append(int(own.sum()))
            full.append(int(own.sum()))
            region[own] = len(visible)
            _paint(img, alpha, x0, y0, rng)
            objects.append(dict(label=label, bbox=[float(x0), float(y0), float(bw), float(bh)]))
            break
    for obj, v, f in zip(objects, visible, full):
        obj['visible'] = v / max(f, 1)
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(2, 9)  # sensor noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objects


def _paint(img: np.ndarray, alpha: np.ndarray, x0: int, y0: int,
           rng: np.random.Generator) -> None:
    """Composite a shaded colour through ``alpha`` onto ``img`` at (x0, y0), in place.
    The colour is redrawn until it stands out from the background under it."""
    bh, bw = alpha.shape
    patch = img[y0:y0 + bh, x0:x0 + bw]
    under = patch[alpha > 0.5].mean(0) if (alpha > 0.5).any() else patch.mean((0, 1))
    for _ in range(10):
        colour = _random_colour(rng)
        if np.linalg.norm(colour - under) > 90:
            break
    angle = rng.uniform(0, 2 * np.pi)  # a soft light gradient across the object
    t = ((np.arange(bw, dtype=np.float32)[None, :] / bw - 0.5) * np.cos(angle) +
         (np.arange(bh, dtype=np.float32)[:, None] / bh - 0.5) * np.sin(angle))  # [bh, bw]
    shade = 1.0 + rng.uniform(0.1, 0.35) * t
    fill = np.clip(colour * shade[..., None], 0, 255)
    a = alpha[..., None]
    patch[:] = patch * (1 - a) + fill * a


# ---------------------------------------------------------------------------- dataset
def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def generate_split(root: str, split: str, num_images: int, seed: int, progress: bool = True,
                   **render_kwargs) -> str:
    """Write ``root/<split>/*.jpg`` and ``root/annotations/instances_<split>.json``;
    return the annotation file path."""
    img_dir = osp.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    images, annotations = [], []
    indices: Iterator[int] = iter(range(num_images))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, total=num_images, desc=f'synthetic {split}', unit='img')
    for i in indices:
        img, objects = render_image(_image_rng(seed, split, i), **render_kwargs)
        file_name = f'{i:06d}.jpg'
        ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok, 'JPEG encoding failed'
        with open(osp.join(img_dir, file_name), 'wb') as f:
            f.write(buf.tobytes())
        images.append(dict(id=i + 1, file_name=file_name, height=int(img.shape[0]),
                           width=int(img.shape[1])))
        for obj in objects:
            _, _, bw, bh = obj['bbox']
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1,
                                    category_id=obj['label'] + 1, bbox=obj['bbox'],
                                    area=bw * bh, iscrowd=0))
    coco = dict(info=dict(description=f'ddetr synthetic shapes ({split})',
                          version=str(GENERATOR_VERSION)),
                images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n, supercategory='shape')
                            for i, n in enumerate(SYNTHETIC_CLASSES)])
    ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file


def _paths(root: str) -> SyntheticCocoPaths:
    return SyntheticCocoPaths(
        root=root, train_img_dir=osp.join(root, 'train'), val_img_dir=osp.join(root, 'val'),
        train_ann_file=osp.join(root, 'annotations', 'instances_train.json'),
        val_ann_file=osp.join(root, 'annotations', 'instances_val.json'))


def _read_manifest(root: str) -> Optional[dict]:
    try:
        with open(osp.join(root, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_complete(root: str, manifest: Optional[dict], params: dict) -> bool:
    if not manifest or not manifest.get('complete') or manifest.get('params') != params:
        return False
    paths = _paths(root)
    if not (osp.isfile(paths.train_ann_file) and osp.isfile(paths.val_ann_file)):
        return False
    return all(len(os.listdir(d)) == params[f'num_{s}'] if osp.isdir(d) else False
               for s, d in (('train', paths.train_img_dir), ('val', paths.val_img_dir)))


@contextlib.contextmanager
def _lock(root: str):
    """Serialise generation between processes (e.g. the ranks of a distributed run)."""
    os.makedirs(root, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(osp.join(root, '.generate.lock'), 'w') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_synthetic_coco(root: str, num_train: int = 2000, num_val: int = 200,
                          seed: int = 0, min_side: int = 160, max_side: int = 320,
                          max_objects: int = 10, min_visible: float = 0.6,
                          progress: bool = True) -> SyntheticCocoPaths:
    """Make sure ``root`` holds the synthetic dataset for these parameters and return
    its paths.

    Reuses the folder when its manifest records the same parameters and generator
    version; otherwise (re)generates both splits. A folder that has content but no
    manifest is not ours and is never overwritten: that raises :class:`ddetr.errors.DataError`.
    """
    if not 1 <= max_objects or not 0 < min_side <= max_side or not 0 <= min_visible < 1:
        raise ConfigError('need max_objects >= 1, 0 < min_side <= max_side, '
                          '0 <= min_visible < 1')
    params = dict(version=GENERATOR_VERSION, num_train=int(num_train), num_val=int(num_val),
                  seed=int(seed), min_side=int(min_side), max_side=int(max_side),
                  max_objects=int(max_objects), min_visible=float(min_visible))
    root = osp.abspath(osp.expanduser(root))
    with _lock(root):
        manifest = _read_manifest(root)
        if _is_complete(root, manifest, params):
            return _paths(root)
        foreign = [n for n in os.listdir(root) if n not in ('.generate.lock', MANIFEST)]
        if manifest is None and foreign:
            raise DataError(
                f'{root} is not empty and has no {MANIFEST}: it is not a ddetr synthetic '
                f'dataset, so it is left alone. Choose an empty or new folder.')
        for name in ('train', 'val', 'annotations'):
            shutil.rmtree(osp.join(root, name), ignore_errors=True)
        _write_manifest(root, params, complete=False)
        render_kwargs = dict(min_side=params['min_side'], max_side=params['max_side'],
                             max_objects=params['max_objects'],
                             min_visible=params['min_visible'])
        for split in SPLITS:
            generate_split(root, split, params[f'num_{split}'], params['seed'],
                           progress=progress, **render_kwargs)
        _write_manifest(root, params, complete=True)
    return _paths(root)


def _write_manifest(root: str, params: Dict, complete: bool) -> None:
    tmp = osp.join(root, MANIFEST + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(dict(generator='ddetr.datasets.synthetic', params=params,
                       complete=complete), f, indent=2)
    os.replace(tmp, osp.join(root, MANIFEST))
