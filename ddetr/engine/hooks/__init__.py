from .finite_loss_hook import FiniteLossHook
from .preflight_hook import PreflightError, PreflightHook

__all__ = ['FiniteLossHook', 'PreflightError', 'PreflightHook']
