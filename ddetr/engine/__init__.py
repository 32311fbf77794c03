"""Training-time pieces on top of mmengine: safe checkpoint loading (installed explicitly by
the tools, see :mod:`ddetr.engine.checkpoint`), fitting checkpoints to models for testing
and fine-tuning (:mod:`ddetr.engine.state_dict`, used by :class:`DdetrRunner`), hooks, CPU
mixed precision."""
from .checkpoint import load_checkpoint_file, use_safe_checkpoint_loader
from .hooks import FiniteLossHook, PreflightError, PreflightHook
from .optim_constructor import GroupedOptimWrapperConstructor
from .optim_wrapper import CPUAmpOptimWrapper
from .runner import DdetrRunner
from .state_dict import CheckpointError

__all__ = ['CheckpointError', 'DdetrRunner', 'FiniteLossHook', 'GroupedOptimWrapperConstructor',
           'PreflightError', 'PreflightHook', 'CPUAmpOptimWrapper', 'load_checkpoint_file',
           'use_safe_checkpoint_loader']
