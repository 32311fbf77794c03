"""Training-time pieces on top of mmengine: safe checkpoint loading (installed explicitly by
the tools, see :mod:`ddetr.engine.checkpoint`), hooks, CPU mixed precision."""
from .checkpoint import load_checkpoint_file, use_safe_checkpoint_loader
from .hooks import FiniteLossHook, PreflightError, PreflightHook
from .optim_wrapper import CPUAmpOptimWrapper

__all__ = ['FiniteLossHook', 'PreflightError', 'PreflightHook', 'CPUAmpOptimWrapper',
           'load_checkpoint_file', 'use_safe_checkpoint_loader']
