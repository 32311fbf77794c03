"""Export of trained detectors to ONNX (static, or dynamic batch and size with a padding
mask), and the checks that an exported model gives ddetr's detections."""
from .export import (
    DYNAMIC_INPUTS,
    MIN_OPSET,
    OUTPUTS,
    STATIC_INPUTS,
    check_two_stage_shape,
    default_shape,
    exact_nearest_resize,
    export_onnx,
    metadata,
    resize_step,
)
from .onnx_wrapper import ONNXDetector, padding_masks
from .parity import compare, onnx_detections, pad_batch, pytorch_detections

__all__ = ['ONNXDetector', 'padding_masks', 'export_onnx', 'exact_nearest_resize', 'metadata',
           'default_shape', 'resize_step', 'check_two_stage_shape', 'MIN_OPSET', 'STATIC_INPUTS',
           'DYNAMIC_INPUTS', 'OUTPUTS', 'pad_batch', 'pytorch_detections', 'onnx_detections',
           'compare']
