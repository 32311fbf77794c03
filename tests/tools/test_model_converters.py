"""The checkpoint converters. mmdet2ddetr is checked against MMDetection itself: its
DeformableDETR (all three Table 1 variants, random weights) and the converted ddetr model
give the same 'tensor' outputs on one padded batch of two differently sized images.
official2ddetr is checked on state dicts in the original release's format, synthesized
from the mmdet model through the correspondence of shared/reference/official-checkpoint.md,
and by a key-by-key round trip."""
import argparse
import copy
import importlib.util
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import DefaultScope

from ddetr.converters import common as converter_utils
from ddetr.converters import mmdetection as mmdet_converter
from ddetr.converters import official as official_converter
from ddetr.registry import MODELS
from ddetr.setup_env import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools', 'model_converters')


def _tool(name):
    spec = importlib.util.spec_from_file_location(f'ddetr_tool_{name}',
                                                  osp.join(TOOLS, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mmdet2ddetr, official2ddetr = _tool('mmdet2ddetr'), _tool('official2ddetr')

MMDET_CONFIGS = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'configs',
                         'deformable_detr')
VARIANTS = {  # name: (mmdet config, ddetr config, with_box_refine, as_two_stage)
    'base': ('deformable-detr_r50_16xb2-50e_coco.py', 'ddetr_r50.py', False, False),
    'refine': ('deformable-detr-refine_r50_16xb2-50e_coco.py', 'ddetr_r50_refine.py', True,
               False),
    'twostage': ('deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
                 'ddetr_r50_refine_twostage.py', True, True),
}
IDS80 = converter_utils.COCO80_CATEGORY_IDS


def shrink(model_cfg, num_classes, mmdet_layout):
    """Small but faithful: ResNet-18, 2 + 2 layers, FFN 64, 30 queries. embed_dims stays
    256: mmdet's two-stage query embedding hard-codes 128 features per coordinate."""
    model_cfg.backbone.depth = 18
    model_cfg.backbone.init_cfg = None
    model_cfg.neck.in_channels = [128, 256, 512]
    model_cfg.encoder.num_layers = model_cfg.decoder.num_layers = 2
    model_cfg.num_queries = 30
    model_cfg.bbox_head.num_classes = num_classes
    for coder in (model_cfg.encoder, model_cfg.decoder):
        if mmdet_layout:
            coder.layer_cfg.ffn_cfg.feedforward_channels = 64
        else:
            coder.layer_cfg.feedforward_channels = 64
    return model_cfg


def build_mmdet(variant, num_classes=91, seed=0):
    """mmdet's DeformableDETR as built and initialized, with noise on every weight outside the
    backbone (so no tensor is a constant that a wrong mapping could reproduce) and random
    BatchNorm affine weights and statistics in the backbone."""
    cfg = shrink(Config.fromfile(osp.join(MMDET_CONFIGS, VARIANTS[variant][0])).model,
                 num_classes, mmdet_layout=True)
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MMDET_MODELS.build(cfg)
        # as mmdet's Runner does; before it, level_embed is uninitialized memory (maybe NaN)
        model.init_weights()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith('backbone'):
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.add_(torch.randn(m.weight.shape, generator=gen) * 0.1)
                m.bias.add_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def build_ddetr(variant, num_classes=91):
    register_all_modules()
    cfg = shrink(Config.fromfile(osp.join(ROOT, 'configs', VARIANTS[variant][1])).model,
                 num_classes, mmdet_layout=False)
    return MODELS.build(cfg).eval()


def padded_batch():
    """Two images of different sizes padded to (100, 120), as DetDataPreprocessor does."""
    gen = torch.Generator().manual_seed(5)
    inputs = torch.zeros(2, 3, 100, 120)
    samples = []
    for img_id, (h, w) in enumerate(((100, 96), (72, 120))):
        inputs[img_id, :, :h, :w] = torch.randn(3, h, w, generator=gen)
        samples.append(DetDataSample(metainfo=dict(
            img_shape=(h, w), batch_input_shape=(100, 120), pad_shape=(100, 120),
            ori_shape=(h, w), scale_factor=(1.0, 1.0))))
    return inputs, samples


def tensor_outputs(model, batch):
    inputs, samples = batch
    with torch.no_grad():
        return model(inputs, copy.deepcopy(samples), mode='tensor')


def assert_same_outputs(mmdet_out, ddetr_out):
    """logits to 1e-3, boxes to 1e-4, as issue 3 asks."""
    torch.testing.assert_close(ddetr_out[0], mmdet_out[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(ddetr_out[1], mmdet_out[1], atol=1e-4, rtol=0)


# --- the original release's format, from the documented correspondence ----------------
def with_aliases(out, with_box_refine, as_two_stage):
    """The original release's second names of its heads: with refinement the decoder's
    bbox_embed, two-stage also its class_embed, are the same tensors."""
    for key in list(out):
        if with_box_refine and key.startswith('bbox_embed.'):
            out['transformer.decoder.' + key] = out[key]
        if as_two_stage and key.startswith('class_embed.'):
            out['transformer.decoder.' + key] = out[key]
    return out


def mmdet_to_official(state_dict, with_box_refine, as_two_stage, neck_biases=None):
    """An original-release state dict with the mmdet model's weights (the table in
    shared/reference/official-checkpoint.md, read right to left), including the aliases
    the original keeps and the input_proj biases it has (zero unless given)."""
    decoder_norms = {'0': 'norm2', '1': 'norm1', '2': 'norm3'}
    out = {}
    for key, value in state_dict.items():
        if key.endswith('num_batches_tracked'):
            continue  # FrozenBatchNorm2d has none
        m = re.fullmatch(r'neck\.(convs|extra_convs)\.(\d+)\.(conv|gn)\.(\w+)', key)
        if m:
            index = int(m[2]) + (3 if m[1] == 'extra_convs' else 0)
            out[f'input_proj.{index}.{0 if m[3] == "conv" else 1}.{m[4]}'] = value
            if m[3] == 'conv':
                bias = torch.zeros(value.shape[0]) if neck_biases is None else neck_biases[index]
                out[f'input_proj.{index}.0.bias'] = bias
            continue
        rules = [
            (r'backbone\.(.+)', r'backbone.0.body.\1'),
            (r'level_embed', 'transformer.level_embed'),
            (r'encoder\.layers\.(\d+)\.self_attn\.(.+)',
             r'transformer.encoder.layers.\1.self_attn.\2'),
            (r'(encoder|decoder)\.layers\.(\d+)\.ffn\.layers\.0\.0\.(\w+)',
             r'transformer.\1.layers.\2.linear1.\3'),
            (r'(encoder|decoder)\.layers\.(\d+)\.ffn\.layers\.1\.(\w+)',
             r'transformer.\1.layers.\2.linear2.\3'),
            (r'encoder\.layers\.(\d+)\.norms\.(\d)\.(\w+)',
             lambda m: f'transformer.encoder.layers.{m[1]}.norm{int(m[2]) + 1}.{m[3]}'),
            (r'decoder\.layers\.(\d+)\.norms\.(\d)\.(\w+)',
             lambda m: f'transformer.decoder.layers.{m[1]}.{decoder_norms[m[2]]}.{m[3]}'),
            (r'decoder\.layers\.(\d+)\.self_attn\.attn\.(.+)',
             r'transformer.decoder.layers.\1.self_attn.\2'),
            (r'decoder\.layers\.(\d+)\.cross_attn\.(.+)',
             r'transformer.decoder.layers.\1.cross_attn.\2'),
            (r'reference_points_fc\.(\w+)', r'transformer.reference_points.\1'),
            (r'query_embedding\.weight', 'query_embed.weight'),
            (r'memory_trans_fc\.(\w+)', r'transformer.enc_output.\1'),
            (r'memory_trans_norm\.(\w+)', r'transformer.enc_output_norm.\1'),
            (r'pos_trans_fc\.(\w+)', r'transformer.pos_trans.\1'),
            (r'pos_trans_norm\.(\w+)', r'transformer.pos_trans_norm.\1'),
            (r'bbox_head\.cls_branches\.(\d+)\.(\w+)', r'class_embed.\1.\2'),
            (r'bbox_head\.reg_branches\.(\d+)\.([024])\.(\w+)',
             lambda m: f'bbox_embed.{m[1]}.layers.{int(m[2]) // 2}.{m[3]}'),
        ]
        for pattern, target in rules:
            m = re.fullmatch(pattern, key)
            if m:
                out[target(m) if callable(target) else m.expand(target)] = value
                break
        else:
            raise AssertionError(f'test mapping misses {key}')
    return with_aliases(out, with_box_refine, as_two_stage)


def official_args(with_box_refine, as_two_stage):
    return argparse.Namespace(with_box_refine=with_box_refine, two_stage=as_two_stage,
                              num_feature_levels=4, enc_n_points=4, dec_n_points=4,
                              num_queries=30, hidden_dim=256, nheads=8, dim_feedforward=64,
                              enc_layers=2, dec_layers=2, backbone='resnet18', dilation=False)


def ddetr_to_official(state_dict, with_box_refine, as_two_stage):
    """The inverse of official2ddetr's renaming (for the round trip)."""
    decoder_norms = {'norm1': 'norm2', 'norm2': 'norm1', 'norm3': 'norm3'}
    num_convs = len({k.split('.')[2] for k in state_dict if k.startswith('neck.convs.')})
    out = {}
    for key, value in state_dict.items():
        if key.endswith('num_batches_tracked'):
            continue
        m = re.fullmatch(r'neck\.(convs|extra_convs)\.(\d+)\.(conv|gn)\.(\w+)', key)
        if m:
            index = int(m[2]) + (num_convs if m[1] == 'extra_convs' else 0)
            out[f'input_proj.{index}.{0 if m[3] == "conv" else 1}.{m[4]}'] = value
            continue
        m = re.fullmatch(r'decoder\.layers\.(\d+)\.(norm\d)\.(\w+)', key)
        if m:
            out[f'transformer.decoder.layers.{m[1]}.{decoder_norms[m[2]]}.{m[3]}'] = value
            continue
        for pattern, target in [
                (r'backbone\.(.+)', r'backbone.0.body.\1'),
                (r'level_embed', 'transformer.level_embed'),
                (r'(encoder|decoder)\.(.+)', r'transformer.\1.\2'),
                (r'reference_points_fc\.(\w+)', r'transformer.reference_points.\1'),
                (r'query_embedding\.weight', 'query_embed.weight'),
                (r'memory_trans_fc\.(\w+)', r'transformer.enc_output.\1'),
                (r'memory_trans_norm\.(\w+)', r'transformer.enc_output_norm.\1'),
                (r'pos_trans_(fc|norm)\.(\w+)',
                 lambda m: f'transformer.pos_trans{"" if m[1] == "fc" else "_norm"}.{m[2]}'),
                (r'bbox_head\.cls_branches\.(.+)', r'class_embed.\1'),
                (r'bbox_head\.reg_branches\.(.+)', r'bbox_embed.\1')]:
            m = re.fullmatch(pattern, key)
            if m:
                out[target(m) if callable(target) else m.expand(target)] = value
                break
        else:
            raise AssertionError(f'no inverse for {key}')
    return with_aliases(out, with_box_refine, as_two_stage)


# --- tests -------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def batch():
    return padded_batch()


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_mmdet_checkpoint_gives_mmdet_outputs(variant, batch, tmp_path, capsys):
    mmdet_model = build_mmdet(variant)
    src, dst = tmp_path / 'mmdet.pth', tmp_path / 'ddetr.pth'
    torch.save({'state_dict': mmdet_model.state_dict(), 'meta': {}}, src)
    assert mmdet2ddetr.main([str(src), str(dst)]) == 0
    assert 'not mapped' not in capsys.readouterr().out  # every key has a rule
    ckpt = torch.load(dst, weights_only=False)
    assert ckpt['meta']['as_two_stage'] == VARIANTS[variant][3]
    model = build_ddetr(variant)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    for key in ('neck.convs.0.conv.bias', 'neck.extra_convs.0.conv.bias'):
        assert torch.all(ckpt['state_dict'][key] == 0)  # mmdet's neck has no biases
    assert_same_outputs(tensor_outputs(mmdet_model, batch), tensor_outputs(model, batch))


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_official_checkpoint(variant, batch, tmp_path, capsys):
    _, _, refine, two_stage = VARIANTS[variant]
    mmdet_model = build_mmdet(variant, seed=1)
    official = mmdet_to_official(mmdet_model.state_dict(), refine, two_stage)
    assert ('transformer.reference_points.weight' in official) != two_stage
    src, dst = tmp_path / 'official.pth', tmp_path / 'ddetr.pth'
    torch.save({'model': official, 'args': official_args(refine, two_stage), 'epoch': 49}, src)
    assert official2ddetr.main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    # aliases: 2 (+1 encoder) box MLPs x 3 layers x 2 tensors, and two-stage 3 class heads
    num_aliases = {'base': 0, 'refine': 12, 'twostage': 18 + 6}[variant]
    assert printed.count('(alias of ') == num_aliases
    assert 'not mapped (left out)' not in printed
    converted = torch.load(dst, weights_only=False)
    assert converted['meta']['with_box_refine'] == refine
    assert converted['meta']['as_two_stage'] == two_stage
    # the same weights as the mmdet path (the original's zero input_proj biases included)
    via_mmdet, _, _ = mmdet_converter.convert_state_dict(mmdet_model.state_dict())
    assert converted['state_dict'].keys() == via_mmdet.keys()
    for key, value in via_mmdet.items():
        assert torch.equal(converted['state_dict'][key], value), key
    model = build_ddetr(variant)
    model.load_state_dict(converted['state_dict'], strict=True)
    assert_same_outputs(tensor_outputs(mmdet_model, batch), tensor_outputs(model, batch))


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_official_round_trip(variant):
    """official -> ddetr -> official reproduces every key and value (non-zero neck biases,
    aliases and all)."""
    _, _, refine, two_stage = VARIANTS[variant]
    gen = torch.Generator().manual_seed(3)
    biases = [torch.randn(256, generator=gen) for _ in range(4)]
    official = mmdet_to_official(build_mmdet(variant, seed=2).state_dict(), refine, two_stage,
                                 neck_biases=biases)
    converted, unmapped, aliases, variant_info = official_converter.convert_state_dict(
        official, official_args(refine, two_stage))
    assert unmapped == []
    assert len(aliases) == sum(k.startswith('transformer.decoder.') and '_embed.' in k
                               for k in official)
    assert variant_info['with_box_refine'] == refine and variant_info['as_two_stage'] == two_stage
    assert torch.equal(converted['neck.extra_convs.0.conv.bias'], biases[3])
    back = ddetr_to_official(converted, refine, two_stage)
    assert back.keys() == official.keys()
    for key in official:
        assert torch.equal(back[key], official[key]), key
    # without args the variant is read from the keys
    _, _, _, from_keys = official_converter.convert_state_dict(official)
    assert (from_keys['with_box_refine'], from_keys['as_two_stage']) == (refine, two_stage)


@pytest.mark.parametrize('variant', ['base', 'twostage'])
def test_91_to_80_classes(variant, batch, tmp_path):
    """Rows by COCO category id; the two-stage encoder head keeps row 0, so the same
    proposals are picked and every box is unchanged."""
    _, _, refine, two_stage = VARIANTS[variant]
    mmdet_model = build_mmdet(variant, seed=4)
    model91 = build_ddetr(variant, num_classes=91)
    state91, _, _ = mmdet_converter.convert_state_dict(mmdet_model.state_dict())
    model91.load_state_dict(state91)
    src, dst = tmp_path / 'official.pth', tmp_path / 'ddetr80.pth'
    torch.save({'model': mmdet_to_official(mmdet_model.state_dict(), refine, two_stage),
                'args': official_args(refine, two_stage)}, src)
    assert official2ddetr.main([str(src), str(dst), '--num-classes', '80']) == 0
    ckpt = torch.load(dst, weights_only=False)
    assert ckpt['meta']['num_classes'] == 80 and len(ckpt['meta']['dataset_meta']['classes']) == 80
    model80 = build_ddetr(variant, num_classes=80)
    model80.load_state_dict(ckpt['state_dict'], strict=True)
    out91, out80 = tensor_outputs(model91, batch), tensor_outputs(model80, batch)
    torch.testing.assert_close(out80[0], out91[0][..., IDS80], atol=1e-5, rtol=0)
    torch.testing.assert_close(out80[1], out91[1], atol=1e-5, rtol=0)
    if two_stage:
        enc = ckpt['state_dict']['bbox_head.cls_branches.2.weight']
        torch.testing.assert_close(enc[0], state91['bbox_head.cls_branches.2.weight'][0])
        # the mmdet path maps the same way
        mapped, _, _ = mmdet_converter.convert_state_dict(mmdet_model.state_dict(), num_classes=80)
        for key, value in mapped.items():
            assert torch.equal(ckpt['state_dict'][key], value), key


def test_two_stage_without_refinement_cannot_be_mapped_to_80():
    state = mmdet_to_official(build_mmdet('base').state_dict(), False, False)
    state['transformer.enc_output.weight'] = torch.zeros(256, 256)  # pretend two-stage
    state['class_embed.2.weight'] = state['class_embed.0.weight']
    state['class_embed.2.bias'] = state['class_embed.0.bias']
    with pytest.raises(converter_utils.ConversionError, match='cannot be mapped'):
        official_converter.convert_state_dict(state, num_classes=80)


def test_errors_name_the_problem(tmp_path, capsys, one_line_exit):
    missing = tmp_path / 'missing.pth'
    assert f'{missing}: no such file' in one_line_exit(
        mmdet2ddetr.main, [str(missing), str(tmp_path / 'out.pth')])
    text = tmp_path / 'notes.txt'
    text.write_text('not a checkpoint')
    assert 'not a readable PyTorch checkpoint' in one_line_exit(
        official2ddetr.main, [str(text), str(tmp_path / 'out.pth')])
    no_model = tmp_path / 'no_model.pth'
    torch.save({'optimizer': {}, 'epoch': 3}, no_model)
    assert "no 'model' state dict" in one_line_exit(
        official2ddetr.main, [str(no_model), str(tmp_path / 'out.pth')])
    wrong = tmp_path / 'wrong.pth'
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(1)}}, wrong)
    assert 'not an MMDetection DeformableDETR state dict' in one_line_exit(
        mmdet2ddetr.main, [str(wrong), str(tmp_path / 'out.pth')])
    # 91 -> 80 needs 91 rows
    state = build_mmdet('base', num_classes=85).state_dict()
    with pytest.raises(converter_utils.ConversionError,
                       match=r'bbox_head.cls_branches.0.weight has shape \(85, 256\)'):
        mmdet_converter.convert_state_dict(state, num_classes=80)
    # an unknown key is printed and left out; --config reports what does not fit
    state['some_new_module.weight'] = torch.zeros(3)
    src = tmp_path / 'extra.pth'
    torch.save(state, src)
    config = osp.join(ROOT, 'configs', 'ddetr_r50.py')
    err = one_line_exit(mmdet2ddetr.main,
                            [str(src), str(tmp_path / 'out.pth'), '--config', config])
    out = capsys.readouterr().out
    assert 'not mapped (left out) (1):\n  some_new_module.weight' in out
    assert 'shape of query_embedding.weight: checkpoint (30, 512), model (300, 512)' in out
    assert 'missing in the converted checkpoint: backbone.layer1.0.conv3.weight' in out
    assert 'do not fit' in err
    assert not (tmp_path / 'out.pth').exists()


def test_full_size_conversion_fits_the_config(tmp_path, capsys):
    cfg = Config.fromfile(osp.join(MMDET_CONFIGS, VARIANTS['twostage'][0])).model
    cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MMDET_MODELS.build(cfg)  # 80 classes, as mmdet's COCO checkpoints
    src, dst = tmp_path / 'full.pth', tmp_path / 'full_ddetr.pth'
    torch.save({'state_dict': model.state_dict()}, src)
    config = osp.join(ROOT, 'configs', 'ddetr_r50_refine_twostage.py')
    assert mmdet2ddetr.main([str(src), str(dst), '--config', config]) == 0
    assert 'does not fit' not in capsys.readouterr().out


def test_scripts_run_from_the_command_line(tmp_path):
    for script in ('mmdet2ddetr.py', 'official2ddetr.py'):
        result = subprocess.run([sys.executable, osp.join(TOOLS, script), '--help'],
                                capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
        assert 'SRC' in result.stdout and 'DST' in result.stdout
        assert '--num-classes' in result.stdout and '--config' in result.stdout
