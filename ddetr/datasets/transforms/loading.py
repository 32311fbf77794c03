"""Image loading that fails clearly: every problem names the file.

:func:`load_image` is the one place that reads and decodes an image;
:class:`LoadImageFromFileSafe` is the pipeline step built on it.
"""
import logging
from typing import Optional, Set

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmengine.logging import print_log

from ddetr.errors import ImageLoadError  # one message argument: DataLoader workers re-raise it
from ddetr.registry import TRANSFORMS


def to_bgr_uint8(img: np.ndarray) -> np.ndarray:
    """Any decoded image as 3-channel uint8 ``[h, w, 3]``: grayscale is repeated over
    the channels, a 4th (alpha) channel is dropped (as OpenCV and PIL do when they
    decode to colour), 16-bit samples are scaled down."""
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise TypeError(f'unsupported pixel type {img.dtype}')
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f'unsupported image shape {img.shape}')
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img)


def load_image(path: str, color_type: str = 'color', imdecode_backend: str = 'cv2',
               backend_args: Optional[dict] = None) -> np.ndarray:
    """Read and decode ``path`` into a uint8 ``[h, w, 3]`` array in the channel order
    of ``mmcv.imfrombytes`` (BGR for the cv2 backend).

    Raises:
        ImageLoadError: the file is missing, unreadable, empty or not a decodable
            image; the message names the file and the reason.
    """
    try:
        img_bytes = fileio.get(path, backend_args=backend_args)
    except FileNotFoundError:
        raise ImageLoadError(f'image file not found: {path}') from None
    except Exception as e:  # permissions, a folder, a remote backend error...
        raise ImageLoadError(f'cannot read image file {path}: {e}') from None
    if not img_bytes:
        raise ImageLoadError(f'image file is empty: {path}')
    try:
        img = mmcv.imfrombytes(img_bytes, flag=color_type, backend=imdecode_backend)
    except Exception as e:  # e.g. PIL's UnidentifiedImageError
        raise ImageLoadError(f'cannot decode image file {path} (corrupt or not an image): '
                             f'{type(e).__name__}: {e}') from None
    if img is None:  # OpenCV returns None for undecodable bytes
        raise ImageLoadError(f'cannot decode image file {path} (corrupt or not an image)')
    try:
        return to_bgr_uint8(img)
    except (TypeError, ValueError) as e:
        raise ImageLoadError(f'cannot use image file {path}: {e}') from None


@TRANSFORMS.register_module()
class LoadImageFromFileSafe(LoadImageFromFile):
    """Drop-in replacement for mmcv's ``LoadImageFromFile`` (same arguments) that
    never fails with a bare traceback.

    Required keys: ``img_path``; optional ``height``/``width`` (from the annotation,
    checked against the decoded size). Added keys: ``img`` (uint8 ``[h, w, 3]``, or
    float32 with ``to_float32``), ``img_shape``, ``ori_shape``.

    A missing, empty or corrupt file is logged as a warning naming the file (once per
    file and process) and the transform returns ``None``: mmengine's ``BaseDataset``
    then draws another image in training. In test mode :class:`SafeCocoDataset` turns
    the ``None`` into an :class:`ImageLoadError` naming the file. Grayscale and RGBA
    images come out as 3 channels; ``ignore_empty`` is accepted and has no effect
    (skipping is always on).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._warned: Set[str] = set()

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            print_log(msg, logger='current', level=logging.WARNING)

    def transform(self, results: dict) -> Optional[dict]:
        path = results['img_path']
        backend_args = self.backend_args
        if backend_args is None and self.file_client_args is not None:
            backend_args = self.file_client_args
        try:
            img = load_image(path, self.color_type, self.imdecode_backend, backend_args)
        except ImageLoadError as e:
            self._warn_once(path, f'{e}; skipping this image')
            return None
        expected = (results.get('height'), results.get('width'))
        if None not in expected and tuple(expected) != img.shape[:2]:
            self._warn_once(path + ':size', f'{path}: decoded size {img.shape[:2]} differs '
                            f'from the annotated (height, width) {tuple(expected)}')
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results
