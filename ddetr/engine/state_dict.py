"""Fitting a checkpoint's state dict to a model, the two ways ddetr loads weights:

- for testing and inference (:func:`load_for_testing`): every parameter comes from the
  checkpoint; a file that would leave most of the model unloaded (another config, a
  release that was never converted, an empty file) is refused with a message naming the
  config, how much matched and the converter to run;
- for fine-tuning (:func:`load_for_finetuning`, training with ``load_from``): every
  parameter whose name and shape match is loaded; only the classification layers may be
  left out (another number of classes), and they are re-initialized with the paper's
  prior-probability bias. Anything else left unloaded is an error.
"""
from typing import Dict, List, Optional

import torch
from torch import nn

from ddetr.errors import CheckpointError

# The layers whose shape follows the number of classes: the head's classification
# branches (one per decoder layer, plus the encoder's proposal branch in two-stage).
CLASS_LAYER_PREFIXES = ('bbox_head.cls_branches.',)

CONVERTERS = (
    'python tools/model_converters/official2ddetr.py ORIGINAL.pth CONVERTED.pth  '
    '(original Deformable DETR release)\n'
    '  python tools/model_converters/mmdet2ddetr.py MMDET.pth CONVERTED.pth  (MMDetection)\n'
    '  python tools/model_converters/hf2ddetr.py HF_DIR CONVERTED.pth  '
    '(Hugging Face transformers folder)')


def state_dict_of(checkpoint, path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint (an mmengine checkpoint or a bare state dict),
    without a (D)DP ``module.`` prefix."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'checkpoint {path} holds a {type(checkpoint).__name__}, not a '
                              f'state dict')
    state_dict = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state_dict, dict) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f'checkpoint {path} has no state dict of tensors')
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def source_of(keys) -> Optional[str]:
    """Which unconverted release a state dict's keys look like, if any."""
    keys = list(keys)
    if any(k.startswith(('backbone.0.body.', 'transformer.level_embed')) for k in keys):
        return 'the original Deformable DETR release'
    if any(k.startswith(('model.backbone.conv_encoder.', 'model.backbone.model.',
                         'model.level_embed')) for k in keys):
        return "Hugging Face transformers' DeformableDetrForObjectDetection"
    # MMDetection keeps the FFN in ffn.layers, the norms in norms.i and the box MLP as a
    # Sequential (reg_branches.i.0/2/4); ddetr has linear1/2, norm1..3 and layers.0/1/2
    if any('.ffn.layers.' in k or '.norms.' in k for k in keys) or any(
            k.startswith('bbox_head.reg_branches.') and k.split('.')[3] in ('0', '2', '4')
            for k in keys if k.count('.') >= 4):
        return 'MMDetection'
    return None


def _config_name(model: nn.Module) -> str:
    return getattr(getattr(model, 'cfg', None), 'filename', None) or 'the given config'


def _first(keys: List[str], n: int = 5) -> str:
    return ', '.join(keys[:n]) + (' ...' if len(keys) > n else '')


def check_state_dict_fits(model: nn.Module, state_dict: dict, checkpoint: str,
                          min_fraction: float = 0.5, config: Optional[str] = None) -> int:
    """Refuse (CheckpointError) a state dict that would leave most of ``model``'s
    parameters unloaded: the message names the config the model came from, how many
    parameters matched by name and shape, the first missing and unexpected keys, and the
    converter to run. Returns the number of matched entries."""
    own = model.state_dict()
    matched = [k for k, v in state_dict.items() if k in own and own[k].shape == v.shape]
    if own and len(matched) >= min_fraction * len(own):
        return len(matched)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    source = source_of(state_dict)
    lines = [f'checkpoint {checkpoint} does not fit the model built from '
             f'{config or _config_name(model)}: {len(matched)} of its {len(own)} '
             f'parameters/buffers match by name and shape'
             + (' (the checkpoint is empty)' if not state_dict else '')]
    if source:
        lines.append(f'its keys are those of {source}, never converted to ddetr')
    if missing:
        lines.append(f'missing ({len(missing)}): {_first(missing)}')
    if unexpected:
        lines.append(f'unexpected ({len(unexpected)}): {_first(unexpected)}')
    lines.append('check that the config is the one the checkpoint was trained with, or '
                 'convert a released checkpoint first:\n  ' + CONVERTERS)
    raise CheckpointError('\n'.join(lines))


def load_for_testing(model: nn.Module, state_dict: dict, checkpoint: str,
                     config: Optional[str] = None) -> None:
    """Load every parameter of ``model`` from ``state_dict``: refused when most of the model
    would stay unloaded (:func:`check_state_dict_fits`), and when any key is missing,
    unexpected or of another shape (the message names them)."""
    from mmengine.runner.checkpoint import load_state_dict
    check_state_dict_fits(model, state_dict, checkpoint, config=config)
    try:
        load_state_dict(model, state_dict, strict=True)
    except RuntimeError as e:
        lines = [f'checkpoint {checkpoint} does not fit the model built from '
                 f'{config or _config_name(model)}: {str(e).strip()[:2000]}']
        source = source_of(state_dict)
        if source:
            lines.append(f'its keys are those of {source}, never converted to ddetr; '
                         f'convert it first:\n  ' + CONVERTERS)
        else:
            lines.append('to start training from it with other classes, use it as '
                         '`load_from` in tools/train.py (fine-tuning)')
        raise CheckpointError('\n'.join(lines)) from None


def _is_class_layer(key: str) -> bool:
    return key.startswith(CLASS_LAYER_PREFIXES)


def load_for_finetuning(model: nn.Module, state_dict: dict, checkpoint: str,
                        config: Optional[str] = None) -> str:
    """Load every entry of ``state_dict`` whose name and shape match ``model``'s and
    re-initialize the classification layers left out (their prior-probability bias, A.4
    / focal loss). Refused (CheckpointError) when any other parameter or buffer would stay
    unloaded. Returns the log block saying what was loaded, re-initialized and unused."""
    config = config or _config_name(model)
    own = model.state_dict()
    loadable = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    left = [k for k in own if k not in loadable and not k.endswith('num_batches_tracked')]
    class_left = [k for k in left if _is_class_layer(k)]
    other_left = [k for k in left if not _is_class_layer(k)]
    if other_left:
        def why(key):
            if key not in state_dict:
                return f'{key} (not in the checkpoint)'
            return (f'{key} (checkpoint {tuple(state_dict[key].shape)}, '
                    f'model {tuple(own[key].shape)})')
        source = source_of(state_dict)
        lines = [f'load_from {checkpoint} does not fit the model built from {config}: '
                 f'{len(other_left)} of its {len(own)} parameters/buffers outside the '
                 f'classification layers would stay unloaded: '
                 + '; '.join(why(k) for k in other_left[:5])
                 + (' ...' if len(other_left) > 5 else '')]
        if source:
            lines.append(f'its keys are those of {source}, never converted to ddetr')
        lines.append('fine-tuning re-initializes only the classification layers '
                     f'({", ".join(CLASS_LAYER_PREFIXES)}); check that the config is the '
                     'variant the checkpoint was trained as (refinement, two-stage, levels, '
                     'points), or convert a released checkpoint first:\n  ' + CONVERTERS)
        raise CheckpointError('\n'.join(lines))

    missing_cls = set(class_left)
    if missing_cls:
        _reinit_class_layers(model, missing_cls, config)
    model.load_state_dict(loadable, strict=False)

    # (class layers of another size are reported as re-initialized, not as unused)
    unused = [k for k in state_dict if k not in loadable and not (k in own and _is_class_layer(k))]
    lines = [f'load_from {checkpoint}: {len(loadable)} of the model\'s {len(own)} '
             f'parameters/buffers loaded']
    if class_left:
        sizes = sorted({tuple(state_dict[k].shape)[0] for k in class_left if k in state_dict})
        classes = (f'{"/".join(map(str, sizes))} classes in the checkpoint, '
                   if sizes else 'not in the checkpoint, ')
        num_classes = model.bbox_head.num_classes
        lines.append(f'  re-initialized ({classes}{num_classes} in the model; prior-'
                     f'probability bias): {_layers(class_left)}')
    else:
        lines.append('  re-initialized: nothing (the classification layers fit)')
    if unused:
        lines.append(f'  not used from the checkpoint ({len(unused)}): {_layers(unused, 6)}')
    return '\n'.join(lines)


def _layers(keys: List[str], n: int = 100) -> str:
    """``a.0.weight, a.0.bias, a.1.weight`` -> ``a.0, a.1 (weight, bias)``."""
    layers = list(dict.fromkeys(k.rsplit('.', 1)[0] for k in keys))
    params = sorted({k.rsplit('.', 1)[1] for k in keys})
    return _first(layers, n) + f' ({", ".join(params)})'


def _reinit_class_layers(model: nn.Module, keys, config: str) -> None:
    head = getattr(model, 'bbox_head', None)
    if not hasattr(head, 'init_cls_branch'):
        raise CheckpointError(f'{config}: the classification layers {_layers(sorted(keys))} '
                              f'are not in the checkpoint and {type(head).__name__} cannot '
                              f're-initialize them')
    for index, branch in enumerate(head.cls_branches):
        prefix = f'bbox_head.cls_branches.{index}.'
        if any(k.startswith(prefix) for k in keys):
            head.init_cls_branch(branch)
