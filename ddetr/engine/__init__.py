"""Training-time pieces on top of mmengine: :class:`DdetrRunner` (which installs the safe
checkpoint loader of :mod:`ddetr.engine.checkpoint` and fits checkpoints to models for
testing and fine-tuning, :mod:`ddetr.engine.state_dict`), hooks, CPU mixed precision, the
grouped optimizer constructor. (``CheckpointError`` and ``PreflightError`` are
:mod:`ddetr.errors`' classes, exported here too.)"""
from .checkpoint import load_checkpoint_file, use_safe_checkpoint_loader
from .hooks import FiniteLossHook, PreflightError, PreflightHook
from .optim_constructor import GroupedOptimWrapperConstructor
from .optim_wrapper import CPUAmpOptimWrapper
from .runner import DdetrRunner
from .state_dict import CheckpointError

__all__ = ['CheckpointError', 'DdetrRunner', 'FiniteLossHook', 'GroupedOptimWrapperConstructor',
           'PreflightError', 'PreflightHook', 'CPUAmpOptimWrapper', 'load_checkpoint_file',
           'use_safe_checkpoint_loader']
