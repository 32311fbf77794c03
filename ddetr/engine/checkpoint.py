"""Local checkpoint loading for mmengine under torch >= 2.6.

mmengine 0.10.7 calls ``torch.load(filename)`` without ``weights_only``; torch 2.6 made
``weights_only=True`` the default, and mmengine's own checkpoints (message hub, numpy
values in ``meta``, scheduler states) are not weights-only, so ``--resume`` and ``load_from``
of a checkpoint the runner itself wrote fail. Importing this module replaces mmengine's
loader for local paths with one that reads the full pickle, as mmengine did before torch
2.6. Only load checkpoints you trust: a pickle can run code.
"""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location=None):
    """Load a local checkpoint file, including mmengine's non-tensor training state."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or not a torch file: name it
        raise RuntimeError(f'could not load checkpoint {filename}: {e}') from e
