"""Detectors."""
from .deformable_detr import DeformableDETR

__all__ = ['DeformableDETR']
