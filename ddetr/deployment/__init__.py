"""Export of trained detectors to deployment formats (ONNX)."""
from .onnx_wrapper import ONNXDetector

__all__ = ['ONNXDetector']
