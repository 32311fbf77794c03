"""High-level helpers for the tools: build a detector from a config and a checkpoint, run
it on an image file, and :class:`DetInferencer`, MMDetection's inference call over ddetr's
model."""
from .det_inferencer import DetInferencer
from .inference import (
    build_detector,
    build_test_pipeline,
    dataset_meta_of,
    inference_detector,
    init_detector,
    load_weights,
    prepare_image,
)

__all__ = ['DetInferencer', 'build_detector', 'build_test_pipeline', 'dataset_meta_of',
           'init_detector', 'inference_detector', 'load_weights', 'prepare_image']
