"""Compiled ops of ddetr, each with a pure-PyTorch fallback."""
from .dropout import HAS_COUNTER_DROPOUT, Dropout, counter_dropout
from .ms_deform_attn import (BACKEND_ENV, BACKENDS, HAS_COMPILED_OP, backend_info,
                             check_level_shapes, level_shapes, level_starts, ms_deform_attn,
                             ms_deform_attn_pytorch, msda_backend, release_grad_cache)

__all__ = ['ms_deform_attn', 'ms_deform_attn_pytorch', 'backend_info', 'HAS_COMPILED_OP',
           'msda_backend', 'check_level_shapes', 'level_shapes', 'level_starts', 'BACKENDS',
           'BACKEND_ENV', 'release_grad_cache', 'Dropout', 'counter_dropout',
           'HAS_COUNTER_DROPOUT']
