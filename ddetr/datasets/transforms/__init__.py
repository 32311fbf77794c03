"""Data pipeline steps; importing this package registers them in ddetr's TRANSFORMS."""
from .loading import ImageLoadError, LoadImageFromFileSafe, load_image, to_bgr_uint8

__all__ = ['ImageLoadError', 'LoadImageFromFileSafe', 'load_image', 'to_bgr_uint8']
