"""hf2ddetr and ddetr2hf against transformers itself (versions pinned in
requirements/tests.txt).

Tiny random transformers models of each variant (timm ResNet-18, d_model 64, 2 + 2 layers,
20 queries) are saved with ``save_pretrained``, converted, and the ddetr model built from
the written config must give transformers' outputs (logits and boxes of the last layer;
two-stage also the encoder's) on one padded batch of two differently sized images, both
models fed the same normalized tensor and the same mask. Nothing is downloaded."""
import copy
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip('timm')
transformers = pytest.importorskip('transformers')
from mmdet.structures import DetDataSample  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection  # noqa: E402

from ddetr.apis import init_detector  # noqa: E402
from ddetr.converters.common import COCO80_CATEGORY_IDS, coco80_dataset_meta  # noqa: E402
from ddetr.converters.huggingface import coco91_classes  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools', 'model_converters')


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hf2ddetr = load_tool('hf2ddetr')
ddetr2hf = load_tool('ddetr2hf')

# small but of every kind: encoder and decoder differ in heads and FFN width, K = 2
TINY = dict(backbone='resnet18', use_pretrained_backbone=False, d_model=64, encoder_layers=2,
            decoder_layers=2, encoder_attention_heads=8, decoder_attention_heads=4,
            encoder_ffn_dim=48, decoder_ffn_dim=40, encoder_n_points=2, decoder_n_points=2,
            num_queries=20, two_stage_num_proposals=20)
VARIANTS = {
    'plain': dict(),
    'refine': dict(with_box_refine=True),
    'twostage': dict(with_box_refine=True, two_stage=True),
    'single_scale': dict(num_feature_levels=1),
}
LABELS = ('cat', 'dog', 'person', 'car', 'tree')


# --- transformers' side ------------------------------------------------------------------
def build_hf(variant, labels=LABELS, seed=0, distinct_class_heads=True, sizes=TINY):
    """A random transformers model with noise on every parameter and random frozen
    BatchNorm statistics (no tensor a constant that a wrong mapping could reproduce).
    Refinement without two-stage: transformers builds one shared class head; with
    ``distinct_class_heads`` it gets one per layer, as the original release and the hub's
    files have."""
    torch.manual_seed(seed)
    config = DeformableDetrConfig(**sizes, **VARIANTS[variant],
                                  id2label=dict(enumerate(labels)),
                                  label2id={name: i for i, name in enumerate(labels)})
    model = DeformableDetrForObjectDetection(config)
    if distinct_class_heads and variant == 'refine':
        model.class_embed = nn.ModuleList(
            copy.deepcopy(model.class_embed[0]) for _ in range(len(model.class_embed)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        for name, b in model.named_buffers():
            if name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith(('running_mean', '.weight', '.bias')):
                b.add_(torch.randn(b.shape, generator=gen) * 0.1)
    return model.eval()


def save_hf(model, folder):
    model.save_pretrained(str(folder))
    return str(folder)


def hf_outputs(folder, batch):
    """What transformers computes from the folder's files."""
    inputs, samples, mask = batch
    model = DeformableDetrForObjectDetection.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(pixel_values=inputs, pixel_mask=(~mask).long())
    enc = None if out.enc_outputs_class is None else (out.enc_outputs_class,
                                                       out.enc_outputs_coord_logits.sigmoid())
    return out.logits, out.pred_boxes, enc


# --- ddetr's side ------------------------------------------------------------------------
def padded_batch(sizes=((80, 72), (56, 96))):
    """Two images of different sizes padded to the largest (zeros outside), their data
    samples and the padding mask (True on padding)."""
    gen = torch.Generator().manual_seed(5)
    pad = tuple(max(size[i] for size in sizes) for i in range(2))
    inputs = torch.zeros(len(sizes), 3, *pad)
    mask = torch.ones(len(sizes), *pad, dtype=torch.bool)
    samples = []
    for img_id, (h, w) in enumerate(sizes):
        inputs[img_id, :, :h, :w] = torch.randn(3, h, w, generator=gen)
        mask[img_id, :h, :w] = False
        samples.append(DetDataSample(metainfo=dict(
            img_shape=(h, w), batch_input_shape=pad, pad_shape=pad, ori_shape=(h, w),
            scale_factor=(1.0, 1.0))))
    return inputs, samples, mask


def ddetr_outputs(model, batch):
    inputs, samples, _ = batch
    with torch.no_grad():
        out = model(inputs, copy.deepcopy(samples), mode='tensor')
    enc = (out[2], out[3]) if len(out) == 4 else None
    return out[0][-1], out[1][-1], enc


def max_diffs(ref, out, two_stage):
    """(max |logits diff|, max |boxes diff|). Two-stage: queries whose proposals' scores tie
    within rounding may come in another order, so the two sets are matched first (Hungarian
    matching on the distance of (logits, boxes)) and must be a permutation of each other."""
    ref_logits, ref_boxes = ref[0], ref[1]
    logits, boxes = out[0], out[1]
    if two_stage:
        for i in range(logits.shape[0]):
            a = torch.cat([ref_logits[i], ref_boxes[i]], -1)
            b = torch.cat([logits[i], boxes[i]], -1)
            rows, cols = linear_sum_assignment(torch.cdist(a, b).numpy())
            logits[i], boxes[i] = logits[i][cols].clone(), boxes[i][cols].clone()
    return ((logits - ref_logits).abs().max().item(), (boxes - ref_boxes).abs().max().item())


def assert_same(ref, out, two_stage):
    logits_diff, boxes_diff = max_diffs(ref, out, two_stage)
    assert logits_diff < 1e-5 and boxes_diff < 1e-6, (logits_diff, boxes_diff)
    if two_stage:  # the encoder's outputs come in pixel order: no matching needed
        torch.testing.assert_close(out[2][0], ref[2][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[2][1], ref[2][1], atol=1e-6, rtol=0)


@pytest.fixture(scope='module')
def batch():
    return padded_batch()


# --- transformers -> ddetr ---------------------------------------------------------------
@pytest.fixture(scope='module')
def hub_folders(tmp_path_factory, batch):
    """variant -> (folder written by save_pretrained, its labels, transformers' outputs),
    made once per module."""
    made = {}

    def make(variant):
        if variant not in made:
            name = 'refine' if variant == 'refine_one_class_head' else variant
            labels = coco91_classes() if variant == 'plain' else LABELS  # the hub's COCO ids
            model = build_hf(name, labels, distinct_class_heads=variant == 'refine')
            folder = save_hf(model, tmp_path_factory.mktemp(variant))
            made[variant] = folder, labels, hf_outputs(folder, batch)
        return made[variant]
    return make


@pytest.mark.parametrize('variant', ['plain', 'refine', 'twostage', 'single_scale',
                                     'refine_one_class_head'])
def test_hub_folder_gives_transformers_outputs(variant, batch, hub_folders, tmp_path, capsys):
    folder, labels, ref = hub_folders(variant)
    written = load_file(osp.join(folder, 'model.safetensors'))
    if variant == 'refine':  # the hub's layout: one class head per decoder layer
        assert not torch.equal(written['class_embed.0.weight'], written['class_embed.1.weight'])
    dst, cfg = str(tmp_path / 'ddetr.pth'), str(tmp_path / 'ddetr_cfg.py')
    assert hf2ddetr.main([folder, dst, '--write-config', cfg]) == 0
    printed = capsys.readouterr().out
    assert 'not mapped' not in printed and 'does not fit' not in printed
    if variant == 'refine_one_class_head':  # transformers >= 5 wrote the tied head once
        assert 'class_embed.{1}: not in the file' in printed
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['dataset_meta']['classes'] == tuple(labels)
    ddetr_model = init_detector(cfg, dst)
    assert ddetr_model.dataset_meta['classes'] == tuple(labels)  # what demos show
    if variant == 'refine':  # distinct heads stay distinct: the file wins
        for i in range(2):
            assert torch.equal(ckpt['state_dict'][f'bbox_head.cls_branches.{i}.weight'],
                               written[f'class_embed.{i}.weight'])
    assert_same(ref, ddetr_outputs(ddetr_model, batch), two_stage=variant == 'twostage')


@pytest.mark.skipif(os.environ.get('DDETR_HF_FULL_SIZE') != '1',
                    reason='full size (ResNet-50, 6 + 6 layers, 300 queries, ~1 min): set '
                           'DDETR_HF_FULL_SIZE=1')
@pytest.mark.parametrize('variant, num_parameters', [
    ('plain', 40_069_665), ('refine', 40_849_660), ('twostage', 41_181_529)])
def test_full_size_gives_transformers_outputs(variant, num_parameters, tmp_path, capsys):
    """transformers' defaults with 91 labels: the original release's parameter counts
    (refinement with one class head per layer, as the hub's file), and the same outputs
    after conversion. Prints the largest differences (pytest -s)."""
    model = build_hf(variant, coco91_classes(), sizes=dict(use_pretrained_backbone=False))
    assert sum(p.numel() for p in model.parameters()) == num_parameters
    folder = save_hf(model, tmp_path / 'hf')
    dst, cfg = str(tmp_path / 'ddetr.pth'), str(tmp_path / 'cfg.py')
    assert hf2ddetr.main([folder, dst, '--write-config', cfg]) == 0
    assert 'num_classes=91' in open(cfg).read() and 'num_queries' not in open(cfg).read()
    batch = padded_batch(((256, 288), (224, 320)))
    logits_diff, boxes_diff = max_diffs(hf_outputs(folder, batch),
                                        ddetr_outputs(init_detector(cfg, dst), batch),
                                        two_stage=variant == 'twostage')
    with capsys.disabled():
        print(f'\n{variant}: max |logits diff| {logits_diff:.1e}, max |boxes diff| '
              f'{boxes_diff:.1e}')
    assert logits_diff < 1e-5 and boxes_diff < 1e-6


def test_coco_labels_map_to_80_classes(batch, hub_folders, tmp_path):
    """--num-classes 80: rows by COCO category id, mmdet's COCO names in the meta."""
    folder, _, (ref_logits, ref_boxes, _) = hub_folders('plain')
    dst, cfg = str(tmp_path / 'ddetr80.pth'), str(tmp_path / 'cfg80.py')
    assert hf2ddetr.main([folder, dst, '--num-classes', '80', '--write-config', cfg]) == 0
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['dataset_meta'] == coco80_dataset_meta()
    assert 'num_classes' not in open(cfg).read()  # ddetr's configs have 80 classes
    logits, boxes, _ = ddetr_outputs(init_detector(cfg, dst), batch)
    torch.testing.assert_close(logits, ref_logits[..., COCO80_CATEGORY_IDS], atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes, ref_boxes, atol=1e-6, rtol=0)


def hub_4x_names(state_dict):
    """transformers 5's in-memory names -> the names of the hub's files (written by
    transformers 4.x; 5.x's save_pretrained writes them back too): the timm backbone under
    backbone.conv_encoder, fc1/fc2 without the mlp. wrapper, the self-attention's out_proj."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r'^model\.backbone\.model\.', 'model.backbone.conv_encoder.model.', key)
        key = re.sub(r'\.mlp\.fc([12])\.', r'.fc\1.', key)
        key = key.replace('.self_attn.o_proj.', '.self_attn.out_proj.')
        out[key] = value.clone()
    return out


def hub_4x_config(config):
    """A config.json as transformers 4.x wrote the hub's: the timm backbone named by
    ``backbone``/``use_timm_backbone``, no backbone_config."""
    backbone = config.pop('backbone_config')
    config.update(backbone=backbone['backbone'], use_timm_backbone=True,
                  use_pretrained_backbone=False, dilation=False, backbone_kwargs=dict(
                      in_chans=3, out_indices=backbone['out_indices']),
                  transformers_version='4.35.2')
    return config


@pytest.mark.parametrize('variant', ['plain', 'twostage'])
def test_key_generations_convert_alike(variant, tmp_path):
    """One model in three files: (a) save_pretrained of transformers 5 (4.x names, a shared
    head written once, heads under the decoder's alias); (b) the hub's 4.x layout, a
    pytorch_model.bin holding every head under every name (transformers 4.x's state dict,
    synthesized by renaming 5's in-memory names, see hub_4x_names) with a 4.x config.json;
    (c) transformers 5's in-memory names saved by hand. All give one ddetr checkpoint."""
    model = build_hf(variant, seed=2)
    folders = dict(current_save=save_hf(model, tmp_path / 'a'))
    config = json.load(open(osp.join(folders['current_save'], 'config.json')))
    state = model.state_dict()  # every name, tied copies included

    hub = tmp_path / 'b'
    hub.mkdir()
    json.dump(hub_4x_config(dict(config)), open(hub / 'config.json', 'w'))
    torch.save(hub_4x_names(state), hub / 'pytorch_model.bin')
    folders['hub_4x'] = str(hub)

    memory = tmp_path / 'c'
    memory.mkdir()
    json.dump(config, open(memory / 'config.json', 'w'))
    save_file({k: v.clone().contiguous() for k, v in state.items()},
              str(memory / 'model.safetensors'))
    folders['current_names'] = str(memory)

    converted = {}
    for name, folder in folders.items():
        dst = str(tmp_path / f'{name}.pth')
        assert hf2ddetr.main([folder, dst]) == 0
        converted[name] = torch.load(dst, weights_only=True)['state_dict']
    reference = converted.pop('current_save')
    for name, state_dict in converted.items():
        assert state_dict.keys() == reference.keys(), name
        for key, value in reference.items():
            assert torch.equal(state_dict[key], value), (name, key)


def test_the_trap_transformers_shares_the_refine_class_head():
    """transformers (5.x) builds the refinement variant without two-stage with ONE class
    head for every decoder layer (its tied-weights declaration); the original release has
    one per layer. Two-stage keeps them apart. hf2ddetr therefore reads files, never
    transformers' models (the parity test above checks distinct heads survive)."""
    refine = build_hf('refine', distinct_class_heads=False)
    assert refine.class_embed[0].weight is refine.class_embed[1].weight
    twostage = build_hf('twostage')
    assert twostage.class_embed[0].weight is not twostage.class_embed[1].weight


# --- ddetr -> transformers ---------------------------------------------------------------
DDETR_TINY = """_base_ = {base!r}
model = dict(
    num_queries=20, num_points=2, num_feature_levels={levels},
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[128, 256, 512], out_channels=64),
    encoder=dict(num_layers=2, layer_cfg=dict(embed_dims=64, num_heads=8,
                                              feedforward_channels=48)),
    decoder=dict(num_layers=2, layer_cfg=dict(embed_dims=64, num_heads=4,
                                              feedforward_channels=40)),
    bbox_head=dict(num_classes={num_classes}, embed_dims=64))
"""
DDETR_VARIANTS = {  # name: (Table 1 config, num_feature_levels)
    'plain': ('ddetr_r50.py', 4), 'refine': ('ddetr_r50_refine.py', 4),
    'twostage': ('ddetr_r50_refine_twostage.py', 4), 'single_scale': ('ddetr_r50.py', 1)}


def build_ddetr_checkpoint(variant, tmp_path, classes):
    """A random ddetr model (noise on every parameter, random BatchNorm statistics) saved
    with ``classes`` in its meta; returns (config path, checkpoint path, model)."""
    base, levels = DDETR_VARIANTS[variant]
    cfg = tmp_path / 'ddetr_tiny.py'
    cfg.write_text(DDETR_TINY.format(base=osp.join(ROOT, 'configs', base), levels=levels,
                                     num_classes=len(classes)))
    model = init_detector(str(cfg), None, seed=1)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        for m in model.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    ckpt = tmp_path / 'ddetr.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': tuple(classes)}}}, ckpt)
    return str(cfg), str(ckpt), model.eval()


@pytest.mark.parametrize('variant', list(DDETR_VARIANTS))
def test_ddetr_to_transformers_round_trip(variant, batch, tmp_path, capsys):
    cfg, ckpt, model = build_ddetr_checkpoint(variant, tmp_path, LABELS)
    out_dir = str(tmp_path / 'hf_out')
    assert ddetr2hf.main([ckpt, cfg, out_dir]) == 0
    printed = capsys.readouterr().out
    if variant == 'refine':  # the class heads transformers declares tied
        assert 'warning: with_box_refine without two_stage: transformers ties ' \
               'class_embed.1..1 to class_embed.0' in printed
    else:
        assert 'warning' not in printed
    config = json.load(open(osp.join(out_dir, 'config.json')))
    assert config['id2label'] == {str(i): name for i, name in enumerate(LABELS)}
    # transformers 5 keeps the distinct refine heads it finds in a file (it warns that it
    # will not tie them), so every variant matches
    assert_same(hf_outputs(out_dir, batch), ddetr_outputs(model, batch),
                two_stage=variant == 'twostage')
    # and back: the same ddetr weights
    back = str(tmp_path / 'back.pth')
    assert hf2ddetr.main([out_dir, back]) == 0
    original = torch.load(ckpt, weights_only=True)['state_dict']
    converted = torch.load(back, weights_only=True)['state_dict']
    assert converted.keys() == original.keys()
    for key, value in original.items():
        if not key.endswith('num_batches_tracked'):
            assert torch.equal(converted[key], value), key


def test_ddetr_without_class_names_gets_coco_ids(tmp_path):
    """A 91-class checkpoint without dataset_meta (the original release's, converted):
    id2label is COCO's category-id space."""
    cfg, ckpt, model = build_ddetr_checkpoint('plain', tmp_path, coco91_classes())
    torch.save({'state_dict': model.state_dict()}, ckpt)
    assert ddetr2hf.main([ckpt, cfg, str(tmp_path / 'out')]) == 0
    id2label = json.load(open(tmp_path / 'out' / 'config.json'))['id2label']
    assert (id2label['0'], id2label['1'], id2label['12'], id2label['90']) == (
        'N/A', 'person', 'N/A', 'toothbrush')


# --- refusals ------------------------------------------------------------------------------
def write_config(folder, **changes):
    folder.mkdir()
    config = dict(model_type='deformable_detr', backbone='resnet50', use_timm_backbone=True,
                  id2label={'0': 'a'})
    config.update(changes)
    (folder / 'config.json').write_text(json.dumps(config))
    return str(folder)


def test_dc5_refused_by_the_command_line(tmp_path):
    folder = write_config(tmp_path / 'dc5', dilation=True, num_feature_levels=1)
    result = subprocess.run(
        [sys.executable, osp.join(TOOLS, 'hf2ddetr.py'), folder, str(tmp_path / 'out.pth')],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    assert result.stderr.startswith('hf2ddetr.py: error: ')
    assert 'DC5' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'out.pth').exists()


@pytest.mark.parametrize('changes, message', [
    (dict(backbone='resnet50d'), "backbone 'resnet50d' cannot be mapped"),
    (dict(backbone_config=dict(model_type='swin')), "model_type 'swin'"),
    (dict(use_timm_backbone=False), 'use_timm_backbone is false'),
    (dict(backbone_config=dict(model_type='timm_backbone', backbone='resnet50',
                               output_stride=16)), 'DC5'),
    (dict(position_embedding_type='learned'), "position_embedding_type 'learned'"),
    (dict(encoder_n_points=4, decoder_n_points=2), 'differ'),
    (dict(model_type='detr'), "model_type 'detr'"),
])
def test_unsupported_variants_refused(changes, message, tmp_path, one_line_exit):
    folder = write_config(tmp_path / 'hf', **changes)
    assert message in one_line_exit(hf2ddetr.main, [folder, str(tmp_path / 'out.pth')])


def test_other_mistakes_named(tmp_path, one_line_exit):
    assert 'hf download' in one_line_exit(hf2ddetr.main, ['SenseTime/deformable-detr',
                                                          str(tmp_path / 'out.pth')])
    folder = write_config(tmp_path / 'no_weights')
    assert 'no weights' in one_line_exit(hf2ddetr.main, [folder, str(tmp_path / 'o.pth')])
    folder = save_hf(build_hf('plain'), tmp_path / 'hf')  # 5 labels, not COCO's ids
    assert 'needs 91 rows' in one_line_exit(
        hf2ddetr.main, [folder, str(tmp_path / 'o.pth'), '--num-classes', '80'])
