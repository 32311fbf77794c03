"""Training-time pieces on top of mmengine: local checkpoint loading that works with
torch >= 2.6 (imported for its effect), hooks, CPU mixed precision."""
from . import checkpoint  # noqa: F401  (replaces mmengine's local checkpoint loader)
from .hooks import FiniteLossHook, PreflightError, PreflightHook
from .optim_wrapper import CPUAmpOptimWrapper

__all__ = ['FiniteLossHook', 'PreflightError', 'PreflightHook', 'CPUAmpOptimWrapper']
