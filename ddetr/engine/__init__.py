"""Training-time pieces on top of mmengine: safe checkpoint loading (installed explicitly by
the tools, see :mod:`ddetr.engine.checkpoint`), hooks, CPU mixed precision."""
from .checkpoint import load_checkpoint_file, use_safe_checkpoint_loader
from .hooks import FiniteLossHook
from .optim_wrapper import CPUAmpOptimWrapper

__all__ = ['FiniteLossHook', 'CPUAmpOptimWrapper', 'load_checkpoint_file',
           'use_safe_checkpoint_loader']
