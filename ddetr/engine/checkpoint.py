"""Safe checkpoint loading: ``torch.load(weights_only=True)`` plus an allow-list of the
few types mmengine's own checkpoints contain.

A ``.pth`` file is a pickle, and unpickling can run arbitrary code, so a downloaded
checkpoint is never fully unpickled. mmengine's checkpoints are not pure weights, though:
the message hub holds ``HistoryBuffer`` objects with numpy arrays inside. Those types, and
nothing else, are allowed here, so ``--resume`` and ``load_from`` of checkpoints the runner
wrote keep working. A checkpoint that needs any other type is refused with a message
naming it; a user who trusts the file opts in with ``DDETR_TRUST_CHECKPOINTS=1`` (the
tools' ``--trust-checkpoint`` flag sets it).

Nothing happens on import: the entry points that load checkpoints through mmengine's
Runner call :func:`use_safe_checkpoint_loader` (``ddetr.utils.load_run_config`` does), and
``ddetr.apis`` calls :func:`load_checkpoint_file` directly.
"""
import os
import os.path as osp
import pickle
import re

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

TRUST_ENV = 'DDETR_TRUST_CHECKPOINTS'


class UntrustedCheckpointError(RuntimeError):
    """The checkpoint needs a type outside the allow-list to load."""


_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')  # set by HistoryBuffer.__init__


def _history_buffer_getattr(obj, name):
    """Stands in for ``getattr`` while unpickling: a ``HistoryBuffer`` pickles its
    statistics methods as ``getattr(HistoryBuffer, 'mean')`` and so on. Only that lookup
    is allowed; anything else a pickle asks of ``getattr`` is refused."""
    methods = set(_DEFAULT_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in methods:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint')


def _numpy_globals():
    """numpy's array/scalar reconstruction functions (under numpy 1 and 2 names) and the
    dtype classes a pickled array or scalar refers to."""
    core = getattr(np, '_core', None) or np.core
    names = []
    for module in {core.multiarray.__name__, 'numpy.core.multiarray', 'numpy._core.multiarray'}:
        names += [(core.multiarray._reconstruct, f'{module}._reconstruct'),
                  (core.multiarray.scalar, f'{module}.scalar')]
    dtype_classes = [type(np.dtype(t)) for t in
                     (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    return names + [np.ndarray, np.dtype] + dtype_classes


def safe_globals():
    """The allow-list: what mmengine's own checkpoints need beyond torch's defaults."""
    return [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')] + _numpy_globals()


def refused_type(error: pickle.UnpicklingError):
    """What torch's weights-only unpickler refused ('the type os.system'), or None when
    the error is not a refusal (a truncated or non-torch file)."""
    found = re.search(r'GLOBAL (\S+)', str(error))
    if found:
        return f'the type {found.group(1)}'
    found = re.search(r'(getattr\(.*\)) is not allowed', str(error))
    return found.group(1) if found else None


def checkpoints_trusted() -> bool:
    return os.environ.get(TRUST_ENV, '0') not in ('', '0', 'false', 'False')


def load_checkpoint_file(filename: str, map_location=None, trusted: bool = None):
    """``torch.load`` of a local checkpoint with mmengine's allow-list. ``trusted`` (default:
    the ``DDETR_TRUST_CHECKPOINTS`` environment variable) loads the full pickle."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    if trusted is None:
        trusted = checkpoints_trusted()
    try:
        if trusted:
            return torch.load(filename, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if trusted or refused_type(e) is None:
            raise RuntimeError(f'could not load checkpoint {filename}: {e}') from None
        raise UntrustedCheckpointError(
            f'checkpoint {filename} needs {refused_type(e)} to load, which is not on '
            f'ddetr\'s allow-list (unpickling it could run code). If you trust this file, pass '
            f'--trust-checkpoint to the tool or set {TRUST_ENV}=1; otherwise save only its '
            f'tensors (a state dict) and load that.') from None
    except Exception as e:  # truncated or not a torch file: name it
        raise RuntimeError(f'could not load checkpoint {filename}: {e}') from e


def _load_from_local(filename, map_location=None):
    return load_checkpoint_file(filename, map_location=map_location)


def use_safe_checkpoint_loader() -> None:
    """Make mmengine's Runner (``load_from``, ``--resume``) read local checkpoints with
    :func:`load_checkpoint_file`. mmengine 0.10.7's own loader calls ``torch.load`` without
    ``weights_only``, which under torch >= 2.6 refuses the runner's own checkpoints."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local, force=True)
