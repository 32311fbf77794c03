from .finite_loss_hook import FiniteLossHook
from .preflight_hook import PreflightError, PreflightHook
from .train_scale_hook import TrainScaleScheduleHook

__all__ = ['FiniteLossHook', 'PreflightError', 'PreflightHook', 'TrainScaleScheduleHook']
