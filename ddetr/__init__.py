"""ddetr: Deformable DETR (Zhu et al., ICLR 2021), config-driven, in the style of MMDetection."""
from .version import __version__

__all__ = ['__version__']
