"""Convert an MMDetection 3.x DeformableDETR checkpoint into a ddetr checkpoint.

    python tools/model_converters/mmdet2ddetr.py SRC.pth DST.pth [--num-classes 80]
        [--config configs/ddetr_r50.py]

SRC is an mmengine checkpoint ({'state_dict': ..., 'meta': ...}) or a bare state dict of
mmdet's DeformableDETR (any of the three Table 1 variants: the keys are the same up to the
variant's extra layers). DST is an mmengine checkpoint for ddetr's DeformableDETR.

What changes: mmdet's transformer layers keep their FFN and norms in ``ffn.layers`` and
``norms.i``, ddetr in ``linear1/linear2`` and ``norm1..3`` (in order of use); the decoder
self-attention loses mmcv's ``attn.`` wrapper; the box MLP's Sequential indices 0/2/4
become ``layers.0/1/2``; the neck convolutions, which have no bias in mmdet, get zero
biases (ddetr's neck has them, as the original release). Every key that matches no rule is
printed and left out.
"""
import re
from collections import OrderedDict
from typing import List, Optional, Tuple

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
ATTN = r'(sampling_offsets|attention_weights|value_proj|output_proj)'
RULES = [
    (r'backbone\.(.+)', r'backbone.\1'),
    (r'neck\.(convs|extra_convs)\.(\d+)\.(conv|gn)\.(.+)', r'neck.\1.\2.\3.\4'),
    (r'level_embed', 'level_embed'),
    (rf'encoder\.layers\.(\d+)\.self_attn\.{ATTN}\.{LINEAR}', r'encoder.layers.\1.self_attn.\2.\3'),
    (rf'(encoder|decoder)\.layers\.(\d+)\.ffn\.layers\.0\.0\.{LINEAR}', r'\1.layers.\2.linear1.\3'),
    (rf'(encoder|decoder)\.layers\.(\d+)\.ffn\.layers\.1\.{LINEAR}', r'\1.layers.\2.linear2.\3'),
    # norms.i is the (i + 1)-th norm in order of use, in both layer types
    (rf'(encoder|decoder)\.layers\.(\d+)\.norms\.(\d)\.{LINEAR}',
     lambda m: f'{m[1]}.layers.{m[2]}.norm{int(m[3]) + 1}.{m[4]}'),
    (r'decoder\.layers\.(\d+)\.self_attn\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|'
     r'out_proj\.bias)', r'decoder.layers.\1.self_attn.\2'),
    (rf'decoder\.layers\.(\d+)\.cross_attn\.{ATTN}\.{LINEAR}',
     r'decoder.layers.\1.cross_attn.\2.\3'),
    (r'query_embedding\.weight', 'query_embedding.weight'),
    (rf'(reference_points_fc|memory_trans_fc|memory_trans_norm|pos_trans_fc|pos_trans_norm)\.'
     rf'{LINEAR}', r'\1.\2'),
    (rf'bbox_head\.cls_branches\.(\d+)\.{LINEAR}', r'bbox_head.cls_branches.\1.\2'),
    (rf'bbox_head\.reg_branches\.(\d+)\.([024])\.{LINEAR}',
     lambda m: f'bbox_head.reg_branches.{m[1]}.layers.{int(m[2]) // 2}.{m[3]}'),
]


def load_mmdet_state_dict(path: str, trusted: bool = False) -> Tuple[StateDict, dict]:
    """The state dict and meta of an mmengine checkpoint (or a bare state dict)."""
    ckpt = load_torch_file(path, trusted=trusted)
    meta = {}
    if isinstance(ckpt, dict) and 'state_dict' in ckpt:
        meta = ckpt.get('meta') or {}
        state_dict = check_state_dict(ckpt['state_dict'], path, "'state_dict'")
    else:
        state_dict = check_state_dict(ckpt, path, 'the file')
    state_dict = strip_prefix(state_dict)
    if 'level_embed' not in state_dict or not any(k.startswith('bbox_head.cls_branches.')
                                                   for k in state_dict):
        raise ConversionError(f'{path}: not an MMDetection DeformableDETR state dict (no '
                              f'level_embed / bbox_head.cls_branches.*); keys start with '
                              f'{list(state_dict)[:5]}')
    return state_dict, meta


def convert_state_dict(state_dict: StateDict,
                       num_classes: Optional[int] = None) -> Tuple[StateDict, List[str], dict]:
    """mmdet keys -> ddetr keys. Returns (converted, unmapped source keys, variant info)."""
    converted, unmapped = rename(state_dict, RULES)
    # mmdet's neck convolutions have no bias; ddetr's (as the original release) do
    for key in [k for k in converted if re.fullmatch(r'neck\.\w+\.\d+\.conv\.weight', k)]:
        bias_key = key[:-len('weight')] + 'bias'
        if bias_key not in converted:
            weight = converted[key]
            converted[bias_key] = weight.new_zeros(weight.shape[0])
    num_decoder_layers = 1 + max(
        (int(m[1]) for k in converted if (m := re.match(r'decoder\.layers\.(\d+)\.', k))),
        default=-1)
    as_two_stage = 'memory_trans_fc.weight' in converted
    source_classes = converted['bbox_head.cls_branches.0.weight'].shape[0]
    info = dict(as_two_stage=as_two_stage, num_decoder_layers=num_decoder_layers,
                num_classes=source_classes)
    if num_classes is not None and num_classes != source_classes:
        select_class_rows(converted, num_classes,
                          encoder_branch=num_decoder_layers if as_two_stage else None)
        info['num_classes'] = num_classes
    return OrderedDict(sorted(converted.items())), unmapped, info


