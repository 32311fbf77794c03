"""Hugging Face transformers' Deformable DETR (``DeformableDetrForObjectDetection``) <-> ddetr.

    python tools/model_converters/hf2ddetr.py HF_DIR DST.pth [--write-config CFG.py]
        [--num-classes 80]
    python tools/model_converters/ddetr2hf.py CKPT CONFIG OUT_DIR

HF_DIR is a model folder as the hub stores it (``hf download SenseTime/deformable-detr
--local-dir HF_DIR``): ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``,
read with ``weights_only=True``). It is the original release's network under other names:
transformers' plain model with 91 labels has the release's 40,069,665 parameters.

The weights are read from the FILE, never through transformers' model objects (transformers
is not needed to convert). That matters for the box-refinement variant without two-stage:
transformers >= 5 declares its class heads tied (``class_embed.1..5`` = ``class_embed.0``,
``DeformableDetrForObjectDetection._tied_weights_keys``), so a model it builds has one
class head, while the original release and the hub's files have one per decoder layer.
The original release's semantics win: distinct heads in the file stay distinct here.

Two generations of key names are read:

- files written by transformers 4.x (the hub's) and by ``save_pretrained`` of transformers
  5.x (which writes the 4.x names back): ``model.backbone.conv_encoder.model.*`` (the timm
  ResNet), ``fc1``/``fc2``, ``self_attn.out_proj``;
- transformers 5.x's names in memory (a state dict saved by hand):
  ``model.backbone.model.*``, ``mlp.fc1``/``mlp.fc2``, ``self_attn.o_proj``.

The prediction heads appear under up to two names each (``class_embed.N`` and, two-stage,
``model.decoder.class_embed.N``; ``bbox_embed.N`` and, with refinement,
``model.decoder.bbox_embed.N``): two names of one tensor must be equal and become one. A
head shared by every layer may be written once (``class_embed.0`` only: transformers >= 5
drops the tied copies): it is expanded to every layer.

Key correspondence (transformers, 4.x names -> ddetr; N a layer index):
  model.backbone.conv_encoder.model.*          backbone.*  (timm's ResNet names are
                                               torchvision's and mmdet's; num_batches_tracked
                                               = 0 added for the frozen BatchNorms)
  model.input_proj.i.0 / .1                    neck.convs.j / neck.extra_convs.j .conv / .gn
                                               (1x1 convolutions / 3x3 stride-2 ones, in order)
  model.level_embed                            level_embed
  model.encoder.layers.N.self_attn.*           encoder.layers.N.self_attn.*
  model.encoder.layers.N.self_attn_layer_norm / fc1 / fc2 / final_layer_norm
                                               encoder.layers.N.norm1 / linear1 / linear2 / norm2
  model.decoder.layers.N.self_attn.{q,k,v}_proj  decoder.layers.N.self_attn.in_proj_weight/bias
                                               (q, k, v stacked, as nn.MultiheadAttention)
  model.decoder.layers.N.self_attn.out_proj    decoder.layers.N.self_attn.out_proj
  model.decoder.layers.N.self_attn_layer_norm / encoder_attn / encoder_attn_layer_norm /
      fc1 / fc2 / final_layer_norm             decoder.layers.N.norm1 / cross_attn / norm2 /
                                               linear1 / linear2 / norm3
  model.query_position_embeddings              query_embedding  ([:, :C] position, [:, C:] content
                                               in both)
  model.reference_points, enc_output(_norm), pos_trans(_norm)
                                               reference_points_fc, memory_trans_fc/_norm,
                                               pos_trans_fc/_norm
  class_embed.N, bbox_embed.N.layers.K         bbox_head.cls_branches.N,
                                               bbox_head.reg_branches.N.layers.K
"""
import copy
import json
import math
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ddetr.engine.checkpoint import read_safetensors
from ddetr.errors import CheckpointError, ConversionError

from .common import COCO80_CATEGORY_IDS, StateDict, check_state_dict, load_torch_file, rename
from .official import _convert_input_proj

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS_DIR = osp.join(REPO_ROOT, 'configs')

# transformers' name (as files hold it) <-> ddetr's name. {i}: a layer index, {p}: weight or
# bias, {m}: a deformable attention's linear layer, {r}: the rest of a backbone key.
NAMES = [
    ('model.backbone.conv_encoder.model.{r}', 'backbone.{r}'),
    ('model.level_embed', 'level_embed'),
    ('model.encoder.layers.{i}.self_attn.{m}.{p}', 'encoder.layers.{i}.self_attn.{m}.{p}'),
    ('model.encoder.layers.{i}.self_attn_layer_norm.{p}', 'encoder.layers.{i}.norm1.{p}'),
    ('model.encoder.layers.{i}.fc1.{p}', 'encoder.layers.{i}.linear1.{p}'),
    ('model.encoder.layers.{i}.fc2.{p}', 'encoder.layers.{i}.linear2.{p}'),
    ('model.encoder.layers.{i}.final_layer_norm.{p}', 'encoder.layers.{i}.norm2.{p}'),
    ('model.decoder.layers.{i}.self_attn.out_proj.{p}',
     'decoder.layers.{i}.self_attn.out_proj.{p}'),
    ('model.decoder.layers.{i}.self_attn_layer_norm.{p}', 'decoder.layers.{i}.norm1.{p}'),
    ('model.decoder.layers.{i}.encoder_attn.{m}.{p}', 'decoder.layers.{i}.cross_attn.{m}.{p}'),
    ('model.decoder.layers.{i}.encoder_attn_layer_norm.{p}', 'decoder.layers.{i}.norm2.{p}'),
    ('model.decoder.layers.{i}.fc1.{p}', 'decoder.layers.{i}.linear1.{p}'),
    ('model.decoder.layers.{i}.fc2.{p}', 'decoder.layers.{i}.linear2.{p}'),
    ('model.decoder.layers.{i}.final_layer_norm.{p}', 'decoder.layers.{i}.norm3.{p}'),
    ('model.query_position_embeddings.weight', 'query_embedding.weight'),
    ('model.reference_points.{p}', 'reference_points_fc.{p}'),
    ('model.enc_output.{p}', 'memory_trans_fc.{p}'),
    ('model.enc_output_norm.{p}', 'memory_trans_norm.{p}'),
    ('model.pos_trans.{p}', 'pos_trans_fc.{p}'),
    ('model.pos_trans_norm.{p}', 'pos_trans_norm.{p}'),
]
FIELDS = dict(i=r'\d+', p='weight|bias', r='.+',
              m='sampling_offsets|attention_weights|value_proj|output_proj')
# transformers >= 5's names in memory -> the names files hold (its save_pretrained writes
# these back)
CURRENT_TO_FILE = [
    (re.compile(r'^model\.backbone\.model\.'), 'model.backbone.conv_encoder.model.'),
    (re.compile(r'\.mlp\.fc([12])\.'), r'.fc\1.'),
    (re.compile(r'\.self_attn\.o_proj\.'), '.self_attn.out_proj.'),
]
# a prediction head under its own name or the decoder's alias
HEAD = re.compile(r'(model\.decoder\.)?(class|bbox)_embed\.(\d+)\.(.+)')
QKV = re.compile(r'model\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)')
# timm architectures with the torchvision ResNet layout (= mmdet's ResNet, style 'pytorch')
TIMM_RESNETS = {'resnet18': 18, 'resnet34': 34, 'resnet50': 50, 'resnet101': 101,
                'resnet152': 152}
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                'pytorch_model.bin.index.json')
TRANSFORMERS_CLASS = 'DeformableDetrForObjectDetection'


def _rules(pairs: Sequence[Tuple[str, str]]):
    """Rename rules (for :func:`common.rename`) from name templates."""
    rules = []
    for source, target in pairs:
        pattern = re.escape(source)
        for field, regex in FIELDS.items():
            pattern = pattern.replace(re.escape('{%s}' % field), f'(?P<{field}>{regex})')
        rules.append((pattern, lambda m, target=target: target.format(**m.groupdict())))
    return rules


HF_TO_DDETR = _rules(NAMES)
DDETR_TO_HF = _rules([(target, source) for source, target in NAMES])


# ------------------------------------------------------------------ reading a folder
def read_hf_config(hf_dir: str) -> dict:
    """The folder's config.json, checked to be a Deformable DETR's."""
    if not osp.isdir(hf_dir):
        raise ConversionError(
            f'{hf_dir}: not a folder. Download the model first, e.g. '
            f'`hf download SenseTime/deformable-detr --local-dir {hf_dir}`')
    path = osp.join(hf_dir, 'config.json')
    if not osp.isfile(path):
        raise ConversionError(f'{hf_dir}: no config.json (a transformers model folder holds '
                              f'config.json and model.safetensors or pytorch_model.bin)')
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f'{path}: not readable JSON ({e})') from None
    if not isinstance(config, dict) or config.get('model_type') != 'deformable_detr':
        kind = config.get('model_type') if isinstance(config, dict) else type(config).__name__
        raise ConversionError(f'{path}: model_type {kind!r}, not a Deformable DETR '
                              f"('deformable_detr', transformers' {TRANSFORMERS_CLASS})")
    return config


def read_hf_weights(hf_dir: str) -> Tuple[StateDict, str]:
    """(state dict, file name) of the folder's weights: model.safetensors, else
    pytorch_model.bin (only tensors are unpickled), either possibly sharded (*.index.json)."""
    for name in WEIGHT_FILES:
        path = osp.join(hf_dir, name)
        if osp.isfile(path):
            break
    else:
        raise ConversionError(f'{hf_dir}: no weights ({" / ".join(WEIGHT_FILES)})')
    if name.endswith('.index.json'):
        try:
            with open(path) as f:
                shards = sorted(set(json.load(f)['weight_map'].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ConversionError(f'{path}: not a shard index with a weight_map ({e})') from None
        files = [osp.join(hf_dir, shard) for shard in shards]
    else:
        files = [path]
    state_dict: StateDict = OrderedDict()
    for file in files:
        part = _read_safetensors(file) if file.endswith('.safetensors') else \
            check_state_dict(load_torch_file(file), file, 'the file')
        state_dict.update(part)
    return state_dict, name


def _read_safetensors(path: str) -> StateDict:
    try:
        tensors, _ = read_safetensors(path)  # the metadata of the hub's files: format only
    except CheckpointError as e:
        raise ConversionError(f'{path}: not a readable safetensors file ({e})') from None
    return tensors


# ------------------------------------------------------------------ the variant
def _backbone_of(config: dict, where: str) -> Tuple[str, int]:
    """(timm architecture, ResNet depth) of the config's backbone, or a refusal."""
    backbone_config = config.get('backbone_config')
    if isinstance(backbone_config, dict):  # transformers >= 5 (or an explicit 4.x one)
        kind = backbone_config.get('model_type')
        if kind != 'timm_backbone':
            raise ConversionError(
                f"{where}: backbone_config of model_type {kind!r} (transformers' own "
                f"backbone classes): not converted; ddetr maps timm's ResNets "
                f"({', '.join(TIMM_RESNETS)}) only")
        name = backbone_config.get('backbone') or 'resnet50'
        output_stride = backbone_config.get('output_stride')
    else:
        if not config.get('use_timm_backbone', True):
            raise ConversionError(f"{where}: use_timm_backbone is false (transformers' own "
                                  f"backbone classes): not converted; ddetr maps timm's "
                                  f"ResNets ({', '.join(TIMM_RESNETS)}) only")
        name = config.get('backbone') or 'resnet50'
        output_stride = (config.get('backbone_kwargs') or {}).get('output_stride')
    if config.get('dilation') or output_stride not in (None, 32):
        raise ConversionError(
            f'{where}: a dilated C5 backbone (DC5: dilation={config.get("dilation")}, '
            f'output_stride={output_stride}), as SenseTime/deformable-detr-single-scale-dc5; '
            f'ddetr has no config for dilated backbones: not converted')
    # 'timm/resnet50.a1_in1k' -> 'resnet50'; tv_resnet50 is the same architecture
    arch = name.split('/')[-1].split('.')[0]
    arch = arch[len('tv_'):] if arch.startswith('tv_') else arch
    if arch not in TIMM_RESNETS:
        raise ConversionError(
            f"{where}: backbone {name!r} cannot be mapped: ddetr's configs use mmdet's ResNet "
            f"(torchvision's layout), which only timm's plain {', '.join(TIMM_RESNETS)} "
            f"share; no ddetr config for this variant")
    return arch, TIMM_RESNETS[arch]


def classes_of(config: dict, where: str) -> Optional[Tuple[str, ...]]:
    """id2label as a tuple in label-id order (None without id2label)."""
    id2label = config.get('id2label')
    if not id2label:
        return None
    try:
        labels = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, ValueError):
        raise ConversionError(f'{where}: id2label is not a mapping of label ids to names') \
            from None
    if sorted(labels) != list(range(len(labels))):
        raise ConversionError(f'{where}: id2label ids are not 0..{len(labels) - 1} '
                              f'(got {sorted(labels)[:8]}...)')
    return tuple(labels[i] for i in range(len(labels)))


def variant_from_config(config: dict, where: str = 'config.json') -> dict:
    """What ddetr needs from a transformers DeformableDetrConfig (as a dict), or a
    ConversionError naming what ddetr cannot represent."""
    get = config.get
    if get('position_embedding_type', 'sine') != 'sine':
        raise ConversionError(f'{where}: position_embedding_type '
                              f'{get("position_embedding_type")!r}; ddetr has the sine '
                              f'encoding of the paper only: not converted')
    if get('activation_function', 'relu') != 'relu':
        raise ConversionError(f'{where}: activation_function {get("activation_function")!r}; '
                              f'ddetr\'s FFNs use ReLU: not converted')
    enc_points, dec_points = get('encoder_n_points', 4), get('decoder_n_points', 4)
    if enc_points != dec_points:
        raise ConversionError(f'{where}: encoder_n_points={enc_points} and decoder_n_points='
                              f'{dec_points} differ; ddetr has one num_points for both')
    arch, depth = _backbone_of(config, where)
    as_two_stage = bool(get('two_stage', False))
    # two-stage takes its queries from the encoder's top proposals: two_stage_num_proposals
    num_queries = get('two_stage_num_proposals', 300) if as_two_stage else \
        get('num_queries', 300)
    return dict(
        with_box_refine=bool(get('with_box_refine', False)), as_two_stage=as_two_stage,
        num_feature_levels=int(get('num_feature_levels', 4)), num_points=int(enc_points),
        num_queries=int(num_queries), embed_dims=int(get('d_model', 256)),
        num_encoder_layers=int(get('encoder_layers', 6)),
        num_decoder_layers=int(get('decoder_layers', 6)),
        encoder_heads=int(get('encoder_attention_heads', 8)),
        decoder_heads=int(get('decoder_attention_heads', 8)),
        encoder_ffn=int(get('encoder_ffn_dim', 1024)),
        decoder_ffn=int(get('decoder_ffn_dim', 1024)),
        backbone=arch, depth=depth, classes=classes_of(config, where))


# ------------------------------------------------------------------ transformers -> ddetr
def _to_file_names(state_dict: StateDict) -> StateDict:
    """transformers >= 5's in-memory names -> the names files hold."""
    out: StateDict = OrderedDict()
    for key, value in state_dict.items():
        new_key = key
        for pattern, target in CURRENT_TO_FILE:
            new_key = pattern.sub(target, new_key)
        if new_key in out:
            raise ConversionError(f'{key} and another key are both {new_key} (the file mixes '
                                  f'two generations of transformers names)')
        out[new_key] = value
    return out


def _collect_heads(state_dict: StateDict, variant: dict) -> Tuple[StateDict, List[str]]:
    """class_embed / bbox_embed (and their decoder aliases) -> bbox_head branches, one per
    decoder layer (+1 two-stage). Returns (branches, notes)."""
    found: Dict[Tuple[str, int], Dict[str, Tensor]] = {}
    notes = []
    for key, value in state_dict.items():
        match = HEAD.fullmatch(key)
        kind, index, param = match[2], int(match[3]), match[4]
        slot = found.setdefault((kind, index), OrderedDict())
        if param in slot:
            if not torch.equal(slot[param], value):
                raise ConversionError(f'{key} differs from the other name of {kind}_embed.'
                                      f'{index}.{param}; transformers keeps them as one tensor')
            notes.append(f'{key} (alias, dropped)')
        else:
            slot[param] = value
    num_pred = variant['num_decoder_layers'] + (1 if variant['as_two_stage'] else 0)
    out: StateDict = OrderedDict()
    for kind, branch in (('class', 'cls_branches'), ('bbox', 'reg_branches')):
        if (kind, 0) not in found:
            raise ConversionError(f'no {kind}_embed.0 in the weights: not a '
                                  f'{TRANSFORMERS_CLASS}')
        extra = sorted(i for k, i in found if k == kind and i >= num_pred)
        if extra:
            raise ConversionError(f'{kind}_embed.{extra[0]}: more heads than the config\'s '
                                  f'{num_pred} (decoder layers, + 1 two-stage)')
        missing = [i for i in range(num_pred) if (kind, i) not in found]
        if missing and variant['with_box_refine']:  # without refinement one head is the rule
            notes.append(
                f'{kind}_embed.{{{",".join(map(str, missing))}}}: not in the file (written '
                f'once, shared): {kind}_embed.0 expanded to every layer'
                + (' (transformers >= 5 ties the class heads of this variant; the original '
                   'release has one per layer, which this file no longer holds)'
                   if kind == 'class' and not variant['as_two_stage'] else ''))
        first = found[(kind, 0)]
        for index in range(num_pred):
            params = found.get((kind, index), first)
            if params.keys() != first.keys():
                raise ConversionError(f'{kind}_embed.{index} has parameters {list(params)}, '
                                      f'{kind}_embed.0 has {list(first)}')
            if not variant['with_box_refine'] and any(
                    not torch.equal(params[p], first[p]) for p in first):
                raise ConversionError(
                    f'{kind}_embed.{index} differs from {kind}_embed.0, but without box '
                    f'refinement every decoder layer shares one head (as in the original '
                    f'release and in ddetr): not converted')
            for param, value in params.items():
                # without refinement one tensor for all layers, as ddetr's shared branches
                out[f'bbox_head.{branch}.{index}.{param}'] = (
                    first[param] if not variant['with_box_refine'] else value)
    return out, notes


def _convert_self_attn(state_dict: StateDict) -> StateDict:
    """The decoder's q/k/v projections -> nn.MultiheadAttention's stacked in_proj."""
    parts: Dict[Tuple[str, str], Dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        match = QKV.fullmatch(key)
        parts.setdefault((match[1], match[3]), {})[match[2]] = value
    out: StateDict = OrderedDict()
    for (layer, param), qkv in sorted(parts.items()):
        if set(qkv) != set('qkv'):
            raise ConversionError(f'model.decoder.layers.{layer}.self_attn: {param} of '
                                  f'{sorted(qkv)} projections only (q, k and v needed)')
        out[f'decoder.layers.{layer}.self_attn.in_proj_{param}'] = torch.cat(
            [qkv['q'], qkv['k'], qkv['v']])
    return out


def convert_state_dict(state_dict: StateDict, variant: dict
                       ) -> Tuple[StateDict, List[str], List[str]]:
    """transformers keys -> ddetr keys. Returns (converted, unmapped keys, notes)."""
    state_dict = _to_file_names(state_dict)
    heads, qkv, input_proj, rest = (OrderedDict() for _ in range(4))
    for key, value in state_dict.items():
        if HEAD.fullmatch(key):
            heads[key] = value
        elif QKV.fullmatch(key):
            qkv[key] = value
        elif key.startswith('model.input_proj.'):
            input_proj[key[len('model.'):]] = value
        else:
            rest[key] = value
    converted, unmapped = rename(rest, HF_TO_DDETR)
    converted.update(_convert_self_attn(qkv))
    converted.update(_convert_input_proj(input_proj))
    branches, notes = _collect_heads(heads, variant)
    converted.update(branches)
    # transformers' frozen BatchNorms have no num_batches_tracked; mmdet's BatchNorm2d has
    for key in [k for k in converted if k.startswith('backbone.') and
                k.endswith('.running_mean')]:
        converted.setdefault(key[:-len('running_mean')] + 'num_batches_tracked',
                             torch.tensor(0, dtype=torch.int64))
    return OrderedDict(sorted(converted.items())), unmapped, notes


def num_classes_of(converted: StateDict, classes: Optional[Sequence[str]], where: str) -> int:
    """The class head's rows, checked against id2label."""
    rows = converted['bbox_head.cls_branches.0.weight'].shape[0]
    if classes is not None and len(classes) != rows:
        raise ConversionError(f'{where}: id2label has {len(classes)} labels but the class '
                              f'head has {rows} rows')
    return rows


def check_coco_ids(classes: Optional[Sequence[str]], where: str) -> None:
    """--num-classes 80 needs the COCO category-id space (91 labels, 'N/A' gaps)."""
    if classes is not None and len(classes) == 91 and any(
            classes[i] == 'N/A' for i in COCO80_CATEGORY_IDS):
        raise ConversionError(f'{where}: id2label is not COCO\'s category-id space (an "N/A" '
                              f'at a COCO category id): cannot map to the 80 COCO classes')


# ------------------------------------------------------------------ the ddetr config
def base_config_for(variant: dict) -> str:
    """The Table 1 config of the variant (configs/ddetr_r50*.py)."""
    if variant['with_box_refine'] and variant['as_two_stage']:
        name = 'ddetr_r50_refine_twostage.py'
    elif variant['with_box_refine']:
        name = 'ddetr_r50_refine.py'
    else:
        name = 'ddetr_r50.py'
    path = osp.join(CONFIGS_DIR, name)
    if not osp.isfile(path):
        raise ConversionError(f'{path}: ddetr\'s configs not found (run from a source '
                              f'checkout of ddetr)')
    return path


def config_overrides(variant: dict, num_classes: int, base: str) -> dict:
    """The keys of ``model`` (nested) that differ between ``base`` and the variant."""
    from mmengine.config import Config
    model = Config.fromfile(base).model.to_dict()
    embed_dims = variant['embed_dims']
    in_channels = [128, 256, 512] if variant['depth'] < 50 else [512, 1024, 2048]
    wanted = {
        ('num_queries',): variant['num_queries'],
        ('num_feature_levels',): variant['num_feature_levels'],
        ('num_points',): variant['num_points'],
        ('with_box_refine',): variant['with_box_refine'],
        ('as_two_stage',): variant['as_two_stage'],
        ('backbone', 'depth'): variant['depth'],
        ('neck', 'in_channels'): in_channels,
        ('neck', 'out_channels'): embed_dims,
        ('encoder', 'num_layers'): variant['num_encoder_layers'],
        ('encoder', 'layer_cfg', 'embed_dims'): embed_dims,
        ('encoder', 'layer_cfg', 'num_heads'): variant['encoder_heads'],
        ('encoder', 'layer_cfg', 'feedforward_channels'): variant['encoder_ffn'],
        ('decoder', 'num_layers'): variant['num_decoder_layers'],
        ('decoder', 'layer_cfg', 'embed_dims'): embed_dims,
        ('decoder', 'layer_cfg', 'num_heads'): variant['decoder_heads'],
        ('decoder', 'layer_cfg', 'feedforward_channels'): variant['decoder_ffn'],
        ('bbox_head', 'num_classes'): num_classes,
        ('bbox_head', 'embed_dims'): embed_dims,
    }
    if variant['depth'] != 50:  # only used when training without load_from
        wanted[('backbone', 'init_cfg', 'checkpoint')] = f'torchvision://resnet{variant["depth"]}'
    overrides: dict = {}
    for path, value in wanted.items():
        current = model
        for key in path:
            current = current.get(key) if isinstance(current, dict) else None
        if isinstance(current, tuple):
            current = list(current)
        if current != value:
            target = overrides
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = value
    return overrides


def merged_overrides(base: str, overrides: dict) -> dict:
    """Top-level ``model`` keys with the nested overrides merged into the base's values
    (the form :func:`common.verify_against_config` takes)."""
    from mmengine.config import Config
    model = Config.fromfile(base).model.to_dict()

    def merge(into, update):
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)
        return into
    return {key: merge(copy.deepcopy(model.get(key) or {}), value) if isinstance(value, dict)
            else value for key, value in overrides.items()}


def cfg_options(overrides: dict, prefix: str = 'model') -> List[str]:
    """Nested overrides as ``--cfg-options`` items (KEY=VALUE)."""
    items = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            items += cfg_options(value, f'{prefix}.{key}')
        else:
            text = str(value).replace(' ', '') if isinstance(value, list) else str(value)
            items.append(f'{prefix}.{key}={text}')
    return items


def _literal(value) -> str:
    if isinstance(value, dict):
        return 'dict(' + ', '.join(f'{k}={_literal(v)}' for k, v in value.items()) + ')'
    return repr(value)


def child_config_text(base: str, overrides: dict, path: str, header: Sequence[str]) -> str:
    """A config file at ``path`` that inherits ``base`` and changes ``overrides`` only."""
    directory = osp.dirname(osp.abspath(path))
    inside_repo = osp.commonpath([directory, REPO_ROOT]) == REPO_ROOT
    base_ref = osp.relpath(base, directory) if inside_repo else osp.abspath(base)
    lines = [f'# {line}' for line in header] + [f'_base_ = {base_ref!r}']
    if overrides:
        body = ',\n'.join(f'    {key}={_literal(value)}' for key, value in overrides.items())
        lines.append(f'model = dict(\n{body})')
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------ ddetr -> transformers
def coco91_classes() -> Tuple[str, ...]:
    """The 91 labels of transformers' COCO checkpoints: category ids, 'N/A' in the gaps."""
    from .common import coco80_dataset_meta
    labels = ['N/A'] * 91
    for name, category_id in zip(coco80_dataset_meta()['classes'], COCO80_CATEGORY_IDS):
        labels[category_id] = name
    return tuple(labels)


def ddetr_variant(model, where: str) -> dict:
    """The transformers-relevant description of a built ddetr DeformableDETR, or a
    ConversionError naming what transformers cannot represent."""
    from mmdet.models.backbones import ResNet
    backbone, neck = model.backbone, model.neck
    if type(backbone) is not ResNet:
        raise ConversionError(f'{where}: backbone {type(backbone).__name__}; transformers\' '
                              f'timm backbones map from mmdet\'s ResNet only')
    if (backbone.depth not in TIMM_RESNETS.values() or backbone.deep_stem or
            backbone.avg_down or backbone.dcn is not None or backbone.style != 'pytorch' or
            any(d != 1 for d in backbone.dilations)):
        raise ConversionError(f'{where}: a ResNet-{backbone.depth} with deep_stem/avg_down/'
                              f'dcn/style caffe/dilation, which timm\'s plain resnet does not '
                              f'have: not converted')
    if type(neck).__name__ != 'MultiScaleChannelMapper':
        raise ConversionError(f'{where}: neck {type(neck).__name__}; transformers\' input '
                              f'projections are MultiScaleChannelMapper (A.2) only')
    if not model.multi_scale_attention and model.num_feature_levels > 1:
        raise ConversionError(f'{where}: multi_scale_attention=False (a Table 2 ablation); '
                              f'transformers has multi-scale attention only')
    pe = model.positional_encoding
    if (pe.temperature != 10000 or not pe.normalize or pe.offset != -0.5 or
            abs(pe.scale - 2 * math.pi) > 1e-12 or pe.eps != 1e-6):
        raise ConversionError(f'{where}: a positional encoding other than transformers\' '
                              f'(temperature 10000, normalized to 2 pi, offset -0.5)')
    if model.as_two_stage and not model.with_box_refine:
        raise ConversionError(f'{where}: two-stage without box refinement; transformers '
                              f'refuses two_stage=True without with_box_refine')

    def uniform(layers, get, what):
        values = {get(layer) for layer in layers}
        if len(values) != 1:
            raise ConversionError(f'{where}: {what} differs between layers ({sorted(values)}); '
                                  f'transformers has one value')
        return values.pop()
    enc, dec = model.encoder.layers, model.decoder.layers
    variant = dict(
        with_box_refine=model.with_box_refine, as_two_stage=model.as_two_stage,
        num_feature_levels=model.num_feature_levels, num_points=model.num_points,
        num_queries=model.num_queries, embed_dims=model.embed_dims,
        num_encoder_layers=len(enc), num_decoder_layers=len(dec),
        encoder_heads=uniform(enc, lambda m: m.self_attn.num_heads, 'encoder heads'),
        decoder_heads=uniform(dec, lambda m: (m.self_attn.num_heads, m.cross_attn.num_heads),
                              'decoder heads'),
        encoder_ffn=uniform(enc, lambda m: m.linear1.out_features, 'encoder FFN'),
        decoder_ffn=uniform(dec, lambda m: m.linear1.out_features, 'decoder FFN'),
        backbone=f'resnet{backbone.depth}', depth=backbone.depth)
    self_heads, cross_heads = variant['decoder_heads']
    if self_heads != cross_heads:
        raise ConversionError(f'{where}: decoder self-attention ({self_heads}) and '
                              f'cross-attention ({cross_heads}) heads differ')
    variant['decoder_heads'] = self_heads
    return variant


def tied_heads_warning(state_dict: StateDict, variant: dict) -> Optional[str]:
    """The warning for what transformers ties but the checkpoint keeps apart: the class
    heads of the refinement variant without two-stage."""
    if not variant['with_box_refine'] or variant['as_two_stage']:
        return None
    num = variant['num_decoder_layers']
    first = state_dict['bbox_head.cls_branches.0.weight']
    distinct = [i for i in range(1, num)
                if not torch.equal(state_dict[f'bbox_head.cls_branches.{i}.weight'], first) or
                not torch.equal(state_dict[f'bbox_head.cls_branches.{i}.bias'],
                                state_dict['bbox_head.cls_branches.0.bias'])]
    if not distinct:
        return None
    return (f'with_box_refine without two_stage: transformers ties class_embed.1..{num - 1} to '
            f'class_embed.0 ({TRANSFORMERS_CLASS}._tied_weights_keys: one class head for all '
            f'{num} decoder layers), but this checkpoint, as the original release, has '
            f'{num} distinct class heads (class_embed.{",".join(map(str, distinct))} differ '
            f'from class_embed.0). They are written as they are: transformers 5.x loads them '
            f'untied (it warns that it will NOT tie them), but a model it builds from this '
            f'config alone shares one class head, tie_word_embeddings=false also unties the '
            f'box heads from the decoder\'s refinement heads, and a version that applies the '
            f'tie would score every layer, the last included, with class_embed.0')


def hf_config(variant: dict, classes: Sequence[str]) -> dict:
    """config.json as the hub's (transformers 4.x) files have it, which transformers 4.x
    and 5.x both read: a timm ResNet named by ``backbone``, no pretrained download."""
    id2label = {str(i): name for i, name in enumerate(classes)}
    return OrderedDict(
        architectures=[TRANSFORMERS_CLASS], model_type='deformable_detr',
        backbone=variant['backbone'], use_timm_backbone=True, use_pretrained_backbone=False,
        backbone_config=None, dilation=False, num_channels=3,
        d_model=variant['embed_dims'],
        encoder_layers=variant['num_encoder_layers'],
        decoder_layers=variant['num_decoder_layers'],
        encoder_attention_heads=variant['encoder_heads'],
        decoder_attention_heads=variant['decoder_heads'],
        encoder_ffn_dim=variant['encoder_ffn'], decoder_ffn_dim=variant['decoder_ffn'],
        encoder_n_points=variant['num_points'], decoder_n_points=variant['num_points'],
        num_feature_levels=variant['num_feature_levels'],
        num_queries=variant['num_queries'],
        two_stage=variant['as_two_stage'], two_stage_num_proposals=variant['num_queries'],
        with_box_refine=variant['with_box_refine'],
        activation_function='relu', position_embedding_type='sine',
        id2label=id2label, label2id={name: i for i, name in enumerate(classes)})


def to_hf_state_dict(state_dict: StateDict, variant: dict) -> StateDict:
    """ddetr keys -> transformers' file names (as a 4.x state dict holds them: every head
    under every name it has, so 4.x and 5.x load it whatever they tie). Every tensor is
    its own contiguous copy (safetensors refuses shared storage)."""
    heads, qkv, neck, rest = (OrderedDict() for _ in range(4))
    for key, value in state_dict.items():
        if key.endswith('num_batches_tracked'):
            continue  # transformers' frozen BatchNorms have none
        if key.startswith('bbox_head.'):
            heads[key] = value
        elif re.fullmatch(r'decoder\.layers\.\d+\.self_attn\.in_proj_(weight|bias)', key):
            qkv[key] = value
        elif key.startswith('neck.'):
            neck[key] = value
        else:
            rest[key] = value
    out, unmapped = rename(rest, DDETR_TO_HF)
    if unmapped:
        raise ConversionError(f'no transformers name for {unmapped[:5]}')
    for key, value in qkv.items():
        layer, param = re.fullmatch(r'decoder\.layers\.(\d+)\.self_attn\.in_proj_(\w+)',
                                    key).groups()
        for name, part in zip('qkv', value.chunk(3)):
            out[f'model.decoder.layers.{layer}.self_attn.{name}_proj.{param}'] = part
    num_convs = len({k.split('.')[2] for k in neck if k.startswith('neck.convs.')})
    for key, value in neck.items():
        group, index, module, param = re.fullmatch(
            r'neck\.(convs|extra_convs)\.(\d+)\.(conv|gn)\.(\w+)', key).groups()
        level = int(index) + (num_convs if group == 'extra_convs' else 0)
        out[f'model.input_proj.{level}.{0 if module == "conv" else 1}.{param}'] = value
    for key, value in heads.items():
        branch, index, param = re.fullmatch(
            r'bbox_head\.(cls_branches|reg_branches)\.(\d+)\.(.+)', key).groups()
        kind = 'class' if branch == 'cls_branches' else 'bbox'
        out[f'{kind}_embed.{index}.{param}'] = value
        if (kind == 'bbox' and variant['with_box_refine']) or (
                kind == 'class' and variant['as_two_stage']):
            out[f'model.decoder.{kind}_embed.{index}.{param}'] = value
    return OrderedDict((key, value.detach().to('cpu', copy=True).contiguous())
                       for key, value in sorted(out.items()))
