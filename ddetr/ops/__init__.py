"""Compiled ops of ddetr, each with a pure-PyTorch fallback: multi-scale deformable
attention (:mod:`.ms_deform_attn`; the extension and backend choice in :mod:`.extension`,
its argument rules in :mod:`.msda_checks`, the fallback in :mod:`.msda_fallback`) and the
counter-based dropout (:mod:`.dropout`)."""
from .dropout import HAS_COUNTER_DROPOUT, counter_dropout
from .extension import (
    BACKEND_ENV,
    BACKENDS,
    HAS_COMPILED_OP,
    backend_info,
    msda_backend,
    release_grad_cache,
)
from .ms_deform_attn import ms_deform_attn
from .msda_checks import check_level_shapes, level_shapes, level_starts
from .msda_fallback import ms_deform_attn_pytorch

__all__ = ['ms_deform_attn', 'ms_deform_attn_pytorch', 'backend_info', 'HAS_COMPILED_OP',
           'msda_backend', 'check_level_shapes', 'level_shapes', 'level_starts', 'BACKENDS',
           'BACKEND_ENV', 'release_grad_cache', 'counter_dropout', 'HAS_COUNTER_DROPOUT']
