"""Compiled ops of ddetr, each with a pure-PyTorch fallback."""
from .ms_deform_attn import (HAS_COMPILED_OP, backend_info, level_shapes, level_starts,
                             ms_deform_attn, ms_deform_attn_pytorch, msda_backend)

__all__ = ['ms_deform_attn', 'ms_deform_attn_pytorch', 'backend_info', 'msda_backend',
           'level_shapes', 'level_starts', 'HAS_COMPILED_OP']
