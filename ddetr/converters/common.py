"""Shared pieces of the checkpoint converters: loading with clear errors, rule-based key
renaming, the 91 -> 80 class mapping, saving an mmengine checkpoint, and checking the
result against a ddetr config."""
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ddetr.errors import ConversionError

# COCO category ids (1..90) of the 80 contiguous classes, in mmdet's CocoDataset order:
# row i of an 80-class head is row COCO80_CATEGORY_IDS[i] of the original 91-row head.
COCO80_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90
]

StateDict = Dict[str, Tensor]
# a renaming rule: (regex on the source key, replacement template or function)
Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]


def load_torch_file(path: str, trusted: bool = False) -> object:
    """torch.load on CPU with errors naming the file. Without ``trusted`` only tensors, the
    types of mmengine's own checkpoints and argparse's ``Namespace`` (the original release
    stores its ``args`` so) are unpickled; ``trusted`` unpickles anything: only for files
    you trust.

    A safetensors file (flat tensors and str -> str metadata) is returned in the layout
    ``torch.load`` gives for the same checkpoint saved as ``.pth``: with an ``args``
    metadata entry (the original release's) ``{'model': tensors, 'args': args}``, with
    other metadata mmengine's ``{'state_dict': tensors, 'meta': metadata}``, without any
    the bare state dict."""
    import argparse

    from ddetr.engine.checkpoint import is_safetensors, read_safetensors, refused_type, safe_globals
    from ddetr.errors import CheckpointError
    if not osp.isfile(path):
        raise ConversionError(f'{path}: no such file')
    if is_safetensors(path):
        try:
            tensors, meta = read_safetensors(path)
        except CheckpointError as e:
            raise ConversionError(f'{path}: not a readable safetensors file ({e})') from None
        if 'args' in meta:
            return {'model': tensors, 'args': meta['args']}
        return {'state_dict': tensors, 'meta': meta} if meta else tensors
    try:
        if trusted:
            return torch.load(path, map_location='cpu', weights_only=False)
        with torch.serialization.safe_globals(safe_globals() + [argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if trusted or refused_type(e) is None:
            raise ConversionError(f'{path}: not a readable PyTorch checkpoint ({e})') from e
        raise ConversionError(f'{path}: needs {refused_type(e)} to load, which is not '
                              f'allow-listed (unpickling it could run code); pass --trusted '
                              f'if you trust this file') from None
    except Exception as e:  # truncated, not a zip/pickle file...
        raise ConversionError(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: '
                              f'{e})') from e


def strip_prefix(state_dict: StateDict, prefix: str = 'module.') -> StateDict:
    """Drop a DataParallel/DistributedDataParallel prefix present on every key."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items())
    return state_dict


def check_state_dict(obj: object, path: str, what: str) -> StateDict:
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f'{path}: {what} is not a non-empty dict of tensors '
                              f'(got {type(obj).__name__})')
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConversionError(f'{path}: {what} has non-tensor entries, e.g. {bad[:3]}')
    return obj


def rename(state_dict: StateDict, rules: Sequence[Rule]) -> Tuple[StateDict, List[str]]:
    """Apply the first matching rule to every key (``re.fullmatch``). Returns the renamed
    dict, in source order, and the keys no rule matched."""
    out: StateDict = OrderedDict()
    unmapped = []
    for key, value in state_dict.items():
        for pattern, target in rules:
            match = re.fullmatch(pattern, key)
            if match:
                new_key = target(match) if callable(target) else match.expand(target)
                if new_key in out:
                    raise ConversionError(f'two source keys map to {new_key} (the second is '
                                          f'{key})')
                out[new_key] = value
                break
        else:
            unmapped.append(key)
    return out, unmapped


def select_class_rows(state_dict: StateDict, num_classes: int, encoder_branch: Optional[int],
                      prefix: str = 'bbox_head.cls_branches.') -> List[str]:
    """Turn 91-row class branches (rows = COCO category ids) into 80-row ones, in place.

    Decoder branches take rows COCO80_CATEGORY_IDS. The two-stage encoder branch
    (``encoder_branch``) ranks proposals by its channel 0 only (it is trained
    class-agnostic, every target label 0), so its row 0 stays row 0; its other rows take
    the category rows as the decoder's do (they are not used for ranking).

    Returns the keys that were changed. A branch shared (same tensor) by the encoder and
    the decoder cannot be mapped both ways: that is an error.
    """
    if num_classes != 80:
        raise ConversionError(f'--num-classes {num_classes}: only 91 -> 80 (COCO category ids '
                              f'-> contiguous classes) is supported')
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not keys:
        raise ConversionError(f'no class branches ({prefix}*) to map to {num_classes} classes')
    rows = torch.tensor(COCO80_CATEGORY_IDS)
    encoder_rows = torch.tensor([0] + COCO80_CATEGORY_IDS[1:])
    if encoder_branch is not None:
        enc_key = f'{prefix}{encoder_branch}.weight'
        if enc_key not in state_dict:
            raise ConversionError(f'two-stage checkpoint without its encoder class branch '
                                  f'{enc_key}')
        enc_ptr = state_dict[enc_key].data_ptr()
        for k in keys:
            if k.endswith('.weight') and k != enc_key and state_dict[k].data_ptr() == enc_ptr:
                raise ConversionError(
                    f'{k} and {enc_key} are one shared tensor (two-stage without box '
                    f'refinement): the encoder needs row 0 and the decoder the category-id '
                    f'rows, so this head cannot be mapped to 80 classes')
    converted: Dict[int, Tensor] = {}  # keep sharing: convert each storage once
    for k in keys:
        value = state_dict[k]
        if value.shape[0] != 91:
            raise ConversionError(f'{k} has shape {tuple(value.shape)}; mapping to 80 classes '
                                  f'needs 91 rows (COCO category ids 0..90)')
        branch = int(k[len(prefix):].split('.')[0])
        select = encoder_rows if branch == encoder_branch else rows
        ptr = (value.data_ptr(), branch == encoder_branch, k.rsplit('.', 1)[-1])
        if ptr not in converted:
            converted[ptr] = value[select].clone()
        state_dict[k] = converted[ptr]
    return keys


def coco80_dataset_meta() -> dict:
    from mmdet.datasets import CocoDataset
    return dict(classes=tuple(CocoDataset.METAINFO['classes']))


def save_checkpoint(state_dict: StateDict, meta: dict, path: str) -> None:
    """An mmengine checkpoint: {'state_dict': ..., 'meta': ...}."""
    directory = osp.dirname(osp.abspath(path))
    if not osp.isdir(directory):
        raise ConversionError(f'{path}: directory {directory} does not exist')
    torch.save({'state_dict': state_dict, 'meta': meta}, path)


def verify_against_config(state_dict: StateDict, config: str, num_classes: Optional[int],
                          overrides: Optional[dict] = None) -> List[str]:
    """Build the ddetr model of ``config`` (no pretrained download) and list every problem
    loading ``state_dict`` into it would have: missing / unexpected keys, shape mismatches.
    An empty list means an exact fit."""
    from ddetr.apis import build_detector
    from ddetr.config import load_config

    cfg = load_config(config, num_classes=num_classes, no_downloads=True)
    for key, value in (overrides or {}).items():
        cfg.model[key] = value
    model_state = build_detector(cfg).state_dict()
    problems = [f'missing in the converted checkpoint: {k}' for k in model_state
                if k not in state_dict]
    problems += [f'not in the model of {config}: {k}' for k in state_dict if k not in model_state]
    problems += [f'shape of {k}: checkpoint {tuple(state_dict[k].shape)}, model '
                 f'{tuple(v.shape)}' for k, v in model_state.items()
                 if k in state_dict and state_dict[k].shape != v.shape]
    return problems


def report(lines: Iterable[str], title: str) -> None:
    lines = list(lines)
    if lines:
        print(f'{title} ({len(lines)}):')
        for line in lines:
            print(f'  {line}')
