"""Datasets; importing this package registers them (and the transforms) in ddetr's
registries."""
from .safe_coco import SafeCocoDataset
from .synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_PALETTE,
    SyntheticCocoPaths,
    ensure_synthetic_coco,
)
from .synthetic_shapes import SyntheticShapesDataset
from .transforms import ImageLoadError, LoadImageFromFileSafe, load_image

__all__ = [
    'SafeCocoDataset', 'SyntheticShapesDataset', 'SYNTHETIC_CLASSES', 'SYNTHETIC_PALETTE',
    'SyntheticCocoPaths', 'ensure_synthetic_coco', 'ImageLoadError', 'LoadImageFromFileSafe',
    'load_image'
]
