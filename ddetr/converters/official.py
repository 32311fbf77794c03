"""Convert a checkpoint of the original Deformable DETR release
(fundamentalvision/Deformable-DETR) into a ddetr checkpoint.

    python tools/model_converters/official2ddetr.py SRC.pth DST.pth [--num-classes 80]
        [--config configs/ddetr_r50_refine_twostage.py]

SRC is the release's {'model': state_dict, 'args': Namespace, ...} (a bare state dict is
accepted too; the variant is then read from the keys). ``args`` holds a pickled argparse
Namespace, so SRC is unpickled: convert only files you trust.

Key correspondence (original -> ddetr):
  backbone.0.body.*                          backbone.*  (+ num_batches_tracked = 0 for the
                                             FrozenBatchNorm2d layers, which have none)
  input_proj.i.0 / .1  (1x1 conv on C3-C5)   neck.convs.i.conv / .gn
  input_proj.i.0 / .1  (3x3 stride-2 conv)   neck.extra_convs.(i - #1x1).conv / .gn
  transformer.level_embed                    level_embed
  transformer.encoder.layers.N.*             encoder.layers.N.*  (same names)
  transformer.decoder.layers.N.norm2/1/3     decoder.layers.N.norm1/2/3  (ddetr numbers the
                                             norms in order of use: self-attn, cross-attn, FFN)
  transformer.decoder.layers.N.(self_attn|cross_attn|linear1|linear2).*   same
  transformer.reference_points, query_embed  reference_points_fc, query_embedding
  transformer.enc_output(_norm), pos_trans(_norm)   memory_trans_fc/_norm, pos_trans_fc/_norm
  class_embed.N                              bbox_head.cls_branches.N
  bbox_embed.N.layers.K                      bbox_head.reg_branches.N.layers.K
  transformer.decoder.(bbox|class)_embed.*   aliases of the two above (refinement /
                                             two-stage): checked to be equal, then dropped
"""
import re
from collections import OrderedDict
from typing import List, Optional, Tuple

import torch

from ddetr.errors import ConversionError

from .common import (
    StateDict,
    check_state_dict,
    load_torch_file,
    rename,
    select_class_rows,
    strip_prefix,
)

LINEAR = r'(weight|bias)'
# the original numbers a decoder layer's norms norm2 (after self-attention), norm1 (after
# cross-attention), norm3 (after the FFN); ddetr numbers them in order of use
DECODER_NORMS = {'2': 'norm1', '1': 'norm2', '3': 'norm3'}
RULES = [
    (r'backbone\.0\.body\.(.+)', r'backbone.\1'),
    (r'transformer\.level_embed', 'level_embed'),
    (r'transformer\.encoder\.layers\.(\d+)\.(.+)', r'encoder.layers.\1.\2'),
    (rf'transformer\.decoder\.layers\.(\d+)\.norm([123])\.{LINEAR}',
     lambda m: f'decoder.layers.{m[1]}.{DECODER_NORMS[m[2]]}.{m[3]}'),
    (r'transformer\.decoder\.layers\.(\d+)\.(self_attn|cross_attn|linear1|linear2)\.(.+)',
     r'decoder.layers.\1.\2.\3'),
    (rf'transformer\.reference_points\.{LINEAR}', r'reference_points_fc.\1'),
    (r'query_embed\.weight', 'query_embedding.weight'),
    (rf'transformer\.enc_output\.{LINEAR}', r'memory_trans_fc.\1'),
    (rf'transformer\.enc_output_norm\.{LINEAR}', r'memory_trans_norm.\1'),
    (rf'transformer\.pos_trans\.{LINEAR}', r'pos_trans_fc.\1'),
    (rf'transformer\.pos_trans_norm\.{LINEAR}', r'pos_trans_norm.\1'),
    (rf'class_embed\.(\d+)\.{LINEAR}', r'bbox_head.cls_branches.\1.\2'),
    (rf'bbox_embed\.(\d+)\.layers\.(\d+)\.{LINEAR}', r'bbox_head.reg_branches.\1.layers.\2.\3'),
]
ALIAS = re.compile(r'transformer\.decoder\.((?:bbox|class)_embed\..+)')


def load_official_checkpoint(path: str, trusted: bool = False
                             ) -> Tuple[StateDict, Optional[object]]:
    """(state dict, args or None) of an original-release checkpoint. Its argparse ``args``
    load without ``trusted``; other pickled objects need it."""
    ckpt = load_torch_file(path, trusted=trusted)
    if isinstance(ckpt, dict) and 'model' in ckpt:
        state_dict = check_state_dict(ckpt['model'], path, "'model'")
        args = ckpt.get('args')
    elif isinstance(ckpt, dict) and 'transformer.level_embed' in ckpt:
        state_dict, args = check_state_dict(ckpt, path, 'the file'), None
    else:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConversionError(f"{path}: no 'model' state dict of the original Deformable DETR "
                              f"release (top-level keys: {keys})")
    state_dict = strip_prefix(state_dict)
    if 'transformer.level_embed' not in state_dict:
        raise ConversionError(f"{path}: 'model' is not a Deformable DETR state dict (no "
                              f"transformer.level_embed; keys start with {list(state_dict)[:5]})")
    return state_dict, args


def variant_from(state_dict: StateDict, args: Optional[object]) -> dict:
    """The variant, from ``args`` when present, else from the keys (the aliases
    transformer.decoder.bbox_embed exist only with refinement, enc_output only two-stage)."""
    if 'class_embed.0.weight' not in state_dict:
        raise ConversionError('no class_embed.0.weight: not a Deformable DETR detector')
    from_keys = dict(
        with_box_refine=any(k.startswith('transformer.decoder.bbox_embed.') for k in state_dict),
        as_two_stage='transformer.enc_output.weight' in state_dict,
        num_feature_levels=state_dict['transformer.level_embed'].shape[0],
        num_classes=state_dict['class_embed.0.weight'].shape[0])
    if args is None:
        return from_keys
    get = (args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d))
    variant = dict(with_box_refine=bool(get('with_box_refine', False)),
                   as_two_stage=bool(get('two_stage', False)),
                   num_feature_levels=int(get('num_feature_levels', 4)),
                   num_classes=from_keys['num_classes'])
    for key in ('with_box_refine', 'as_two_stage', 'num_feature_levels'):
        if variant[key] != from_keys[key]:
            raise ConversionError(f"args say {key}={variant[key]} but the weights say "
                                  f"{from_keys[key]}")
    enc_points, dec_points = get('enc_n_points'), get('dec_n_points')
    if enc_points is not None and dec_points is not None and enc_points != dec_points:
        raise ConversionError(f'enc_n_points={enc_points} and dec_n_points={dec_points} differ; '
                              f'ddetr uses one num_points for encoder and decoder')
    extras = dict(num_points=enc_points, num_queries=get('num_queries'),
                  embed_dims=get('hidden_dim'), num_heads=get('nheads'),
                  feedforward_channels=get('dim_feedforward'),
                  num_encoder_layers=get('enc_layers'), num_decoder_layers=get('dec_layers'),
                  backbone=get('backbone'), dilation=get('dilation'))
    variant.update({k: v for k, v in extras.items() if v is not None})
    return variant


def convert_state_dict(state_dict: StateDict, args: Optional[object] = None,
                       num_classes: Optional[int] = None
                       ) -> Tuple[StateDict, List[str], List[str], dict]:
    """original keys -> ddetr keys. Returns (converted, unmapped keys, dropped aliases,
    variant)."""
    variant = variant_from(state_dict, args)
    aliases, rest = [], OrderedDict()
    for key, value in state_dict.items():
        match = ALIAS.fullmatch(key)
        if match:
            primary = match[1]
            if primary not in state_dict or not torch.equal(state_dict[primary], value):
                raise ConversionError(f'{key} should be the same tensor as {primary} (the '
                                      f'decoder\'s alias of the head), but it is not')
            aliases.append(f'{key} (alias of {primary})')
        elif key.startswith('input_proj.'):
            continue  # numbered below
        else:
            rest[key] = value
    converted, unmapped = rename(rest, RULES)
    converted.update(_convert_input_proj(state_dict))
    # FrozenBatchNorm2d has no num_batches_tracked; mmdet's BatchNorm2d expects one
    for key in [k for k in converted if k.startswith('backbone.') and
                k.endswith('.running_mean')]:
        converted.setdefault(key[:-len('running_mean')] + 'num_batches_tracked',
                             torch.tensor(0, dtype=torch.int64))
    if num_classes is not None and num_classes != variant['num_classes']:
        num_layers = 1 + max(int(m[1]) for k in converted
                             if (m := re.match(r'decoder\.layers\.(\d+)\.', k)))
        if variant['as_two_stage'] and not variant['with_box_refine']:
            raise ConversionError('two-stage without box refinement shares one class head '
                                  'between the encoder (channel 0) and the decoder (category '
                                  'ids): it cannot be mapped to 80 classes')
        select_class_rows(converted, num_classes,
                          encoder_branch=num_layers if variant['as_two_stage'] else None)
        variant['num_classes'] = num_classes
    return OrderedDict(sorted(converted.items())), unmapped, aliases, variant


def _convert_input_proj(state_dict: StateDict) -> StateDict:
    """input_proj.i: 1x1 convolutions (on backbone maps) -> neck.convs.j in order, 3x3
    stride-2 convolutions (extra levels) -> neck.extra_convs.j in order."""
    indices = sorted({int(m[1]) for k in state_dict
                      if (m := re.fullmatch(r'input_proj\.(\d+)\.0\.weight', k))})
    out: StateDict = OrderedDict()
    counters = dict(convs=0, extra_convs=0)
    for i in indices:
        weight = state_dict[f'input_proj.{i}.0.weight']
        if weight.dim() != 4 or weight.shape[-1] not in (1, 3):
            raise ConversionError(f'input_proj.{i}.0.weight has shape {tuple(weight.shape)}; '
                                  f'expected a 1x1 or 3x3 convolution')
        group = 'convs' if weight.shape[-1] == 1 else 'extra_convs'
        target = f'neck.{group}.{counters[group]}'
        counters[group] += 1
        for src, dst in (('0', 'conv'), ('1', 'gn')):
            for name in ('weight', 'bias'):
                key = f'input_proj.{i}.{src}.{name}'
                if key not in state_dict:
                    raise ConversionError(f'missing key {key}')
                out[f'{target}.{dst}.{name}'] = state_dict[key]
    unknown = [k for k in state_dict if k.startswith('input_proj.') and
               not re.fullmatch(r'input_proj\.\d+\.[01]\.(weight|bias)', k)]
    if unknown:
        raise ConversionError(f'unexpected input_proj keys: {unknown}')
    return out


