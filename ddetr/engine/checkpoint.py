"""Safe checkpoint loading: ``torch.load(weights_only=True)`` plus an allow-list of the
few types mmengine's own checkpoints contain.

A ``.pth`` file is a pickle, and unpickling can run arbitrary code, so a downloaded
checkpoint is never fully unpickled. mmengine's checkpoints are not pure weights, though:
the message hub holds ``HistoryBuffer`` objects with numpy arrays inside. Those types, and
nothing else, are allowed here, so ``--resume`` and ``load_from`` of checkpoints the runner
wrote keep working. A checkpoint that needs any other type is refused with a message
naming it; a user who trusts the file opts in with ``DDETR_TRUST_CHECKPOINTS=1`` (the
tools' ``--trust-checkpoint`` flag sets it).

A ``.safetensors`` file (recognized by its extension or its header) holds tensors and a
str -> str metadata table, nothing that runs code: it is read as ``{'state_dict': tensors,
'meta': metadata}``, each metadata value decoded from the JSON :func:`save_safetensors`
writes (a value that is not JSON, as other writers' ``format: pt``, stays a string).

Nothing happens on import: the entry points that load checkpoints through mmengine's
Runner call :func:`use_safe_checkpoint_loader` (:class:`ddetr.engine.DdetrRunner` does), and
``ddetr.apis`` calls :func:`load_checkpoint_file` directly.
"""
import json
import os
import os.path as osp
import pickle
import re
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from ddetr.errors import CheckpointError, UntrustedCheckpointError

TRUST_ENV = 'DDETR_TRUST_CHECKPOINTS'


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


def unpickling_reason(error: pickle.UnpicklingError) -> str:
    """The one line of torch's weights-only error that says what was wrong ('Unsupported
    operand 0'), not its paragraphs about ``weights_only``."""
    found = re.search(r'WeightsUnpickler error:\s*(\S[^\n]*)', str(error))
    return found.group(1).strip() if found else str(error).strip().split('\n')[0]


def checkpoints_trusted() -> bool:
    return os.environ.get(TRUST_ENV, '0') not in ('', '0', 'false', 'False')


def is_safetensors(filename: str) -> bool:
    """``filename`` ends in ``.safetensors``, or starts as a safetensors file does: an
    8-byte little-endian header length, then the JSON header (a torch zip starts with
    ``PK``, a legacy pickle with ``\\x80``)."""
    if filename.endswith('.safetensors'):
        return True
    try:
        with open(filename, 'rb') as f:
            head = f.read(9)
        size = osp.getsize(filename)
    except OSError:
        return False
    return (len(head) == 9 and head[8:9] == b'{'
            and 8 + int.from_bytes(head[:8], 'little') <= size)


def encode_metadata(meta: dict) -> Dict[str, str]:
    """safetensors metadata (str -> str) of ``meta``: every value as JSON (tuples become
    lists, numpy scalars and arrays numbers and lists)."""
    def jsonable(value):
        if hasattr(value, 'tolist'):  # numpy scalars and arrays, tensors
            return value.tolist()
        raise TypeError(f'{type(value).__name__} cannot be written as JSON')
    out = {}
    for key, value in meta.items():
        try:
            out[str(key)] = json.dumps(value, default=jsonable)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f'meta[{key!r}] cannot be stored in safetensors metadata: '
                                  f'{e}') from None
    return out


def decode_metadata(metadata: Optional[Dict[str, str]]) -> dict:
    """The inverse of :func:`encode_metadata`; a value that is not JSON stays a string."""
    meta = {}
    for key, text in (metadata or {}).items():
        try:
            meta[key] = json.loads(text)
        except ValueError:
            meta[key] = text
    return meta


def read_safetensors(filename: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(tensors on the CPU, decoded metadata) of a safetensors file; a file that is not
    one, or is cut short, raises :class:`CheckpointError` naming it."""
    from safetensors import safe_open
    try:
        with safe_open(filename, framework='pt', device='cpu') as f:
            metadata = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors' own error: a bad header, a truncated file
        raise CheckpointError(f'could not load checkpoint {filename} (safetensors): '
                              f'{type(e).__name__}: {e}') from None
    return tensors, decode_metadata(metadata)


def save_safetensors(filename: str, state_dict: Dict[str, torch.Tensor],
                     meta: Optional[dict] = None) -> None:
    """Write ``state_dict`` and ``meta`` (JSON-encoded, :func:`encode_metadata`) as a
    safetensors file. Tensors are copied to contiguous CPU memory of their own: the format
    refuses tensors sharing storage (a head's branches tied together), and loading the
    copies into the model restores the tie, which lives in the modules."""
    from safetensors.torch import save_file
    tensors = {key: value.detach().to('cpu', copy=True).contiguous()
               for key, value in state_dict.items()}
    save_file(tensors, filename, metadata=encode_metadata(meta or {}))


def load_checkpoint_file(filename: str, map_location=None, trusted: bool = None):
    """``torch.load`` of a local checkpoint with mmengine's allow-list. ``trusted`` (default:
    the ``DDETR_TRUST_CHECKPOINTS`` environment variable) loads the full pickle. A
    safetensors file is read as ``{'state_dict': tensors, 'meta': decoded metadata}``
    (nothing in it can run code, so ``trusted`` does not matter), its tensors moved to
    ``map_location`` when that is a device (left on the CPU for a function or a dict).

    Raises FileNotFoundError for a missing file, :class:`UntrustedCheckpointError` for a
    pickle that needs a type outside the allow-list and :class:`CheckpointError` for a
    file that cannot be read."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    if is_safetensors(filename):
        tensors, meta = read_safetensors(filename)
        if isinstance(map_location, (str, torch.device)):
            tensors = {key: value.to(map_location) for key, value in tensors.items()}
        return {'state_dict': tensors, 'meta': meta}
    if trusted is None:
        trusted = checkpoints_trusted()
    try:
        if trusted:
            return torch.load(filename, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if trusted or refused_type(e) is None:
            raise CheckpointError(f'could not load checkpoint {filename}: not a PyTorch or '
                                  f'safetensors checkpoint ({unpickling_reason(e)})') from None
        raise UntrustedCheckpointError(
            f'checkpoint {filename} needs {refused_type(e)} to load, which is not on '
            f'ddetr\'s allow-list (unpickling it could run code). If you trust this file, pass '
            f'--trust-checkpoint to the tool or set {TRUST_ENV}=1; otherwise save only its '
            f'tensors (a state dict, or tools/misc/publish_model.py\'s .safetensors) and load '
            f'that.') from None
    except Exception as e:  # truncated or not a torch file: name it
        raise CheckpointError(f'could not load checkpoint {filename}: {e}') from e


def _load_from_local(filename, map_location=None):
    return load_checkpoint_file(filename, map_location=map_location)


def use_safe_checkpoint_loader() -> None:
    """Make mmengine's Runner (``load_from``, ``--resume``) read local checkpoints with
    :func:`load_checkpoint_file`. mmengine 0.10.7's own loader calls ``torch.load`` without
    ``weights_only``, which under torch >= 2.6 refuses the runner's own checkpoints."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local, force=True)
