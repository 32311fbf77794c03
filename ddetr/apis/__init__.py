"""High-level helpers for the tools: build a detector from a config and a checkpoint, and
run it on an image file."""
from .inference import (CheckpointError, build_detector, build_test_pipeline, init_detector,
                        inference_detector, load_config, load_weights, prepare_image)

__all__ = [
    'CheckpointError', 'build_detector', 'build_test_pipeline', 'init_detector',
    'inference_detector', 'load_config', 'load_weights', 'prepare_image'
]
