"""DeformableDETR end to end on tiny models: the three Table 1 variants train, predict,
handle padding and empty images; derived settings, two-stage proposals, initialization."""
import math

import pytest
import torch

from ddetr.models import DeformableDETR, MultiScaleDeformableAttention
from ddetr.models.fast_paths import ChannelsLastMaxPool2d
from ddetr.models.utils import inverse_sigmoid

VARIANTS = ['base', 'refine', 'twostage']
SHAPES = [((96, 80), [[10, 12, 50, 70], [40, 5, 78, 40]], [1, 3]),
          ((64, 112), [[20, 10, 100, 60]], [4])]


@pytest.mark.parametrize('variant', VARIANTS)
def test_tensor_mode(variant, build_detector, batch_of):
    model = build_detector(variant).eval()
    inputs, samples = batch_of(model, SHAPES, training=False)
    assert inputs.shape == (2, 3, 96, 112)  # padded to the largest image
    with torch.no_grad():
        outs = model(inputs, samples, mode='tensor')
    cls, boxes = outs[:2]
    assert cls.shape == (2, 2, 12, 5) and boxes.shape == (2, 2, 12, 4)
    assert torch.all((boxes >= 0) & (boxes <= 1))
    if variant == 'twostage':
        num_keys = 12 * 14 + 6 * 7 + 3 * 4 + 2 * 2
        assert len(outs) == 4 and outs[2].shape == (2, num_keys, 5)
        assert outs[3].shape == (2, num_keys, 4)
    else:
        assert len(outs) == 2


@pytest.mark.parametrize('variant', VARIANTS)
def test_loss_is_finite_and_decreases(variant, build_detector, batch_of):
    model = build_detector(variant).train()
    inputs, samples = batch_of(model, SHAPES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(8):
        losses = model(inputs, samples, mode='loss')
        assert all(torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        totals.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    num_terms = 3 * (2 + (variant == 'twostage'))  # last layer, 1 aux layer, encoder
    assert len(losses) == num_terms
    assert totals[-1] < 0.95 * totals[0], totals


@pytest.mark.parametrize('variant', VARIANTS)
def test_empty_and_single_box_images(variant, build_detector, batch_of):
    model = build_detector(variant).train()
    inputs, samples = batch_of(model, [((64, 64), [], []), ((80, 72), [], [])])
    losses = model(inputs, samples, mode='loss')
    for key, value in losses.items():
        assert (value > 0) if key.endswith('loss_cls') else (value == 0), key
    inputs, samples = batch_of(model, [((64, 64), [[8, 8, 40, 50]], [2])])
    losses = model(inputs, samples, mode='loss')
    assert all(value > 0 for value in losses.values()), losses


@pytest.mark.parametrize('variant', VARIANTS)
def test_predict_in_original_image_coordinates(variant, build_detector, batch_of):
    model = build_detector(variant, num_queries=30).eval()
    inputs, samples = batch_of(model, SHAPES, training=False)
    for sample in samples:  # the inputs were resized by 0.5 from the originals
        height, width = sample.img_shape
        sample.set_metainfo(dict(scale_factor=(0.5, 0.5), ori_shape=(2 * height, 2 * width)))
    with torch.no_grad():
        results = model(inputs, samples, mode='predict')
        outs = model(inputs, samples, mode='tensor')
    for img_id, result in enumerate(results):
        pred = result.pred_instances
        assert len(pred) == 100  # 30 queries x 5 classes, top 100
        height, width = result.ori_shape
        assert torch.all(pred.bboxes >= 0)
        assert torch.all(pred.bboxes[:, 0::2] <= width)
        assert torch.all(pred.bboxes[:, 1::2] <= height)
        # the best box is the best (query, class) pair's box scaled to the original image
        scores = outs[0][-1, img_id].sigmoid()
        query = scores.flatten().argmax() // 5
        cx, cy, w, h = outs[1][-1, img_id, query]
        expected = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * torch.tensor(
            [width, height, width, height])
        img_h, img_w = result.img_shape
        expected = torch.minimum(expected.clamp(min=0),
                                 torch.tensor([img_w, img_h, img_w, img_h]) * 2.0)
        torch.testing.assert_close(pred.bboxes[0], expected, rtol=1e-5, atol=1e-4)
        assert pred.scores[0] == scores.max()


@pytest.mark.parametrize('variant', VARIANTS)
def test_batch_of_one_equals_batch_of_two(variant, build_detector, batch_of):
    model = build_detector(variant).eval()
    same = [((80, 96), [], []), ((80, 96), [], [])]
    mixed = [((96, 112), [], []), ((64, 80), [], [])]  # the first is the largest
    with torch.no_grad():
        for shapes, checked in ((same, (0, 1)), (mixed, (0,))):
            inputs, samples = batch_of(model, shapes, training=False)
            together = model(inputs, samples, mode='tensor')
            for img_id in checked:
                alone = model(inputs[img_id:img_id + 1][..., :shapes[img_id][0][0],
                                                        :shapes[img_id][0][1]],
                              samples[img_id:img_id + 1], mode='tensor')
                for a, b in zip(alone[:2], together[:2]):
                    torch.testing.assert_close(a[:, 0], b[:, img_id], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('variant', ['base', 'refine'])
def test_padding_does_not_leak_into_the_transformer(variant, build_detector, sample_of,
                                                    monkeypatch):
    """An image's maps placed in the corner of a padded batch, garbage in the padding: the
    masks, valid ratios and positional encoding make the transformer see the same image.
    (Sizes are multiples of 64 so every level of the small image is an exact corner.)"""
    model = build_detector(variant).eval()
    gen = torch.Generator().manual_seed(0)
    small = [torch.randn(1, 32, 8 // 2 ** i, 8 // 2 ** i, generator=gen) for i in range(4)]
    small[3] = torch.randn(1, 32, 1, 1, generator=gen)
    padded = [torch.randn(2, 32, 16 // 2 ** i, 16 // 2 ** i, generator=gen) * 10
              for i in range(4)]
    for level, feat in enumerate(small):
        h, w = feat.shape[-2:]
        padded[level][1:, :, :h, :w] = feat
    feats = {}
    monkeypatch.setattr(model, 'extract_feat', lambda x: feats['now'])
    with torch.no_grad():
        feats['now'] = tuple(small)
        alone = model(torch.zeros(1, 3, 64, 64), [sample_of(64, 64)], mode='tensor')
        feats['now'] = tuple(padded)
        together = model(torch.zeros(2, 3, 128, 128), [sample_of(128, 128), sample_of(64, 64)],
                         mode='tensor')
    torch.testing.assert_close(alone[0][:, 0], together[0][:, 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone[1][:, 0], together[1][:, 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('variant', VARIANTS)
def test_unpadded_batch_skips_the_attention_masks_with_the_same_results(
        variant, build_detector, batch_of, monkeypatch):
    """Without padding the attention layers get no mask (its masked_fill would zero
    nothing); losses and gradients are those of the masked path."""
    model = build_detector(variant).train()
    inputs, samples = batch_of(model, [((64, 80), [[10, 12, 50, 60]], [1]),
                                       ((64, 80), [[5, 5, 30, 40]], [2])])
    assert not model.any_padding(inputs, samples)
    seen = []
    original = MultiScaleDeformableAttention.forward

    def spy(self, *args, key_padding_mask=None, **kwargs):
        seen.append(key_padding_mask)
        return original(self, *args, key_padding_mask=key_padding_mask, **kwargs)

    monkeypatch.setattr(MultiScaleDeformableAttention, 'forward', spy)
    results = []
    for any_padding in (False, True):  # the skip, then the masks forced on
        monkeypatch.setattr(DeformableDETR, 'any_padding', staticmethod(lambda *a: any_padding))
        seen.clear()
        model.zero_grad()
        losses = model(inputs, samples, mode='loss')
        sum(losses.values()).backward()
        assert all((m is None) != any_padding for m in seen) and seen
        results.append(([v.detach() for v in losses.values()],
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    for a, b in zip(*[r[0] + r[1] for r in results]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a smaller image in the batch is padding
    inputs, samples = batch_of(model, [((64, 80), [], []), ((64, 72), [], [])])
    monkeypatch.undo()
    assert DeformableDETR.any_padding(inputs, samples)


def test_detector_owns_the_variant_and_ablation_settings(build_detector):
    model = build_detector('twostage', num_layers=3, num_points=2, multi_scale_attention=False)
    head = model.bbox_head
    assert not head.share_pred_layer and head.num_pred_layer == 4 and head.as_two_stage
    attentions = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert len(attentions) == 6
    assert all((m.num_levels, m.num_points, m.multi_scale) == (4, 2, False) for m in attentions)
    assert not hasattr(model, 'query_embedding') and not hasattr(model, 'reference_points_fc')
    assert model.positional_encoding.num_feats == 16
    base = build_detector('base')
    assert base.bbox_head.share_pred_layer and base.bbox_head.num_pred_layer == 2
    # the ResNet stem's max-pool: the same pooling, channels-last forward on CPU
    assert type(base.backbone.maxpool) is ChannelsLastMaxPool2d
    assert base.query_embedding.weight.shape == (12, 64)
    single = build_detector('base', num_feature_levels=1)
    assert len(single.neck.convs) == 1 and single.neck.convs[0].conv.in_channels == 512
    assert single.level_embed.shape == (1, 32)
    with torch.no_grad():
        outs = single.eval()(torch.randn(1, 3, 64, 96), None, mode='tensor')
    assert outs[0].shape == (2, 1, 12, 5)


def test_conflicting_sub_config_settings_are_errors(detector_cfg):
    cfg = detector_cfg('base')
    cfg['encoder']['layer_cfg']['num_points'] = 2  # the detector says 4
    with pytest.raises(ValueError, match='num_points'):
        DeformableDETR(**cfg)
    cfg = detector_cfg('base')
    cfg['bbox_head']['share_pred_layer'] = False  # the detector says True (no refinement)
    with pytest.raises(ValueError, match='share_pred_layer'):
        DeformableDETR(**cfg)
    cfg = detector_cfg('base', num_feature_levels=3)
    cfg['neck']['num_outs'] = 4
    with pytest.raises(ValueError, match='num_outs'):
        DeformableDETR(**cfg)
    cfg = detector_cfg('base')
    cfg['neck']['num_outs'] = 4  # the same value is fine
    DeformableDETR(**cfg)


def test_two_stage_proposals(build_detector, monkeypatch):
    model = build_detector('twostage', num_queries=5).eval()
    shapes = torch.tensor([[4, 6], [2, 3]])
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[0, :, 4:] = True  # level 0: the image covers 4 of 6 columns
    memory_mask = torch.cat([mask.flatten(1), torch.zeros(1, 6, dtype=torch.bool)], 1)
    memory_mask[0, 24 + 5] = True  # level 1: its bottom-right pixel is padding
    memory = torch.randn(1, 30, 32)
    output_memory, proposals = model.encoder_proposals(memory, memory_mask, shapes)
    # level 0: centres ((j + 0.5) / 4, (i + 0.5) / 4) of the unpadded 4 x 4, size 0.05
    level0 = proposals[0, :24].view(4, 6, 4)
    for i in range(4):
        for j in range(4):
            expected = torch.tensor([(j + 0.5) / 4, (i + 0.5) / 4, 0.05, 0.05])
            torch.testing.assert_close(level0[i, j], inverse_sigmoid(expected))
    assert torch.all(torch.isinf(level0[:, 4:]))  # padding
    # level 1: size 0.05 * 2 = 0.1
    torch.testing.assert_close(proposals[0, 24 + 4], inverse_sigmoid(torch.tensor(
        [1.5 / 3, 1.5 / 2, 0.1, 0.1])))
    assert torch.isinf(proposals[0, 24 + 5]).all()
    # masked pixels see zero memory
    zero = model.memory_trans_norm(model.memory_trans_fc(torch.zeros(32)))
    torch.testing.assert_close(output_memory[0, 24 + 5], zero)
    torch.testing.assert_close(output_memory[0, 5], zero)
    assert not torch.allclose(output_memory[0, 24 + 4], zero)
    # invalid: a coordinate outside (0.01, 0.99): the end pixels of a 60-wide map
    wide_memory = torch.randn(1, 60, 32)
    wide_out, wide = model.encoder_proposals(wide_memory, torch.zeros(1, 60, dtype=torch.bool),
                                             torch.tensor([[1, 60]]))
    assert torch.isinf(wide[0, 0]).all() and torch.isinf(wide[0, 59]).all()
    assert torch.isfinite(wide[0, 1:59]).all()
    torch.testing.assert_close(wide_out[0, 0], zero)
    # a level of size 0.05 * 2^5 = 1.6 has no valid proposal
    _, sixth = model.encoder_proposals(torch.randn(1, 6, 32), torch.zeros(1, 6, dtype=torch.bool),
                                       torch.tensor([[1, 1]] * 6))
    assert torch.isfinite(sixth[0, :5]).all() and torch.isinf(sixth[0, 5]).all()

    # top-k by channel 0 of the encoder's class branch, boxes detached, no NMS
    scores = torch.randn(1, 30)
    enc_branch = model.bbox_head.cls_branches[model.decoder.num_layers]
    monkeypatch.setattr(enc_branch, 'forward', lambda x: torch.stack(
        [scores.expand(x.shape[0], -1)] * 5, -1) * torch.tensor([1., -1, -1, -1, -1]))
    query_inputs, head_inputs = model.pre_decoder(memory, memory_mask, shapes)
    top = scores[0].topk(5).indices
    torch.testing.assert_close(query_inputs['reference_points'][0],
                               head_inputs['enc_outputs_coord'][0, top])
    assert not query_inputs['reference_points'].requires_grad
    assert query_inputs['query'].shape == query_inputs['query_pos'].shape == (1, 5, 32)


def test_refinement_blocks_the_gradient_at_the_previous_box(build_detector, batch_of):
    model = build_detector('refine', num_layers=3).train()
    inputs, samples = batch_of(model, SHAPES)
    _, boxes = model(inputs, samples, mode='tensor')
    boxes[-1].sum().backward()
    branches = model.bbox_head.reg_branches
    for branch in branches[:-1]:  # earlier boxes only feed the last one through sigma^-1
        assert all(p.grad is None or torch.all(p.grad == 0) for p in branch.parameters())
    assert branches[-1].layers[-1].weight.grad.abs().sum() > 0


def test_initialization(build_detector):
    model = build_detector('base', embed_dims=64)
    for _ in range(2):  # at construction, and again through mmengine's init_weights
        assert torch.all(model.reference_points_fc.bias == 0)
        bound = math.sqrt(6 / (64 + 2))
        assert model.reference_points_fc.weight.abs().max() <= bound
        assert 0.7 < model.level_embed.std() < 1.3  # N(0, 1)
        for module in model.modules():
            if isinstance(module, MultiScaleDeformableAttention):  # A.4 survives xavier
                assert torch.all(module.sampling_offsets.weight == 0)
                assert torch.all(module.attention_weights.bias == 0)
        for conv in model.neck.convs:
            assert torch.all(conv.conv.bias == 0)
        prior = -math.log(99)
        assert torch.allclose(model.bbox_head.cls_branches[0].bias, torch.tensor(prior))
        linear1 = model.encoder.layers[0].linear1.weight
        assert linear1.abs().max() <= math.sqrt(6 / sum(linear1.shape))  # xavier
        model.init_weights()


@pytest.mark.parametrize('variant', VARIANTS)
def test_forward_reads_no_tensor_back_from_the_device(variant, build_detector, batch_of,
                                                      monkeypatch):
    """The levels' (H, W) come from the maps' shapes as Python ints: neither the encoder's
    reference points nor the two-stage proposals call ``.tolist()`` / ``.item()`` (a device
    sync on GPU). The op, which checks its arguments on its own, is stubbed out here."""
    import ddetr.models.layers.multi_scale_deformable_attention as msda_module
    model = build_detector(variant).eval()
    inputs, samples = batch_of(model, SHAPES, training=False)

    def op_stub(value, spatial_shapes, level_start_index, sampling_locations, *args):
        bs, num_queries, num_heads = sampling_locations.shape[:3]
        return value.new_zeros(bs, num_queries, num_heads * value.shape[-1])

    reads = []

    def no_read(name):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, **kwargs):
            reads.append((name, tuple(self.shape)))
            return original(self, *args, **kwargs)
        return spy

    monkeypatch.setattr(msda_module, 'ms_deform_attn', op_stub)
    for name in ('tolist', 'item'):
        monkeypatch.setattr(torch.Tensor, name, no_read(name))
    with torch.no_grad():
        model._forward(inputs, samples)
    assert reads == []


def test_with_cp_from_the_config_keeps_losses_and_gradients(detector_cfg, batch_of):
    """``with_cp=True`` in the encoder's and decoder's ``layer_cfg`` (two-stage with
    refinement, dropout on): the same losses and gradients as without it."""
    results = []
    for with_cp in (False, True):
        cfg = detector_cfg('twostage', dropout=0.1)
        for coder in ('encoder', 'decoder'):
            cfg[coder]['layer_cfg']['with_cp'] = with_cp
        torch.manual_seed(0)
        model = DeformableDETR(**cfg).train()
        assert all(layer.with_cp == with_cp
                   for layer in (*model.encoder.layers, *model.decoder.layers))
        inputs, samples = batch_of(model, SHAPES)
        torch.manual_seed(1)
        losses = model.loss(inputs, samples)
        sum(losses.values()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()
                 if p.grad is not None}
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    (losses, grads), (losses_cp, grads_cp) = results
    torch.testing.assert_close(losses_cp, losses)
    assert grads_cp.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_cp[name], grads[name], msg=name)


@pytest.mark.parametrize('variant', VARIANTS)
def test_inference_on_cpu_runs_the_backbone_channels_last_with_the_same_outputs(
        variant, build_detector, batch_of):
    """Without autograd on CPU the images reach the backbone in channels-last layout (a
    faster path for oneDNN's convolutions); the outputs are those of the default layout,
    which the detector keeps while gradients are recorded."""
    model = build_detector(variant).eval()
    inputs, samples = batch_of(model, SHAPES, training=False)
    layouts = []
    model.backbone.register_forward_pre_hook(lambda module, args: layouts.append(
        args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
    with torch.no_grad():
        fast = model(inputs, samples, mode='tensor')
    with torch.enable_grad():
        default = model(inputs, samples, mode='tensor')
    assert layouts == [True, False]
    for a, b in zip(fast, default):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
