"""Compiled ops of ddetr, each with a pure-PyTorch fallback."""
from .ms_deform_attn import (HAS_COMPILED_OP, backend_info, ms_deform_attn,
                             ms_deform_attn_pytorch)

__all__ = ['ms_deform_attn', 'ms_deform_attn_pytorch', 'backend_info', 'HAS_COMPILED_OP']
