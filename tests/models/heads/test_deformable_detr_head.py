"""DeformableDETRHead: initialization, A.3 box parameterization, the Hungarian loss
(auxiliary and encoder terms, empty images, the normalizer) and post-processing."""
import math

import pytest
import torch
from mmengine.structures import InstanceData

import ddetr.models.utils as model_utils
from ddetr.models.heads import DeformableDETRHead
from ddetr.models.utils import inverse_sigmoid


def make_head(num_layers=3, share=False, two_stage=False, num_classes=5, max_per_img=100):
    torch.manual_seed(0)
    return DeformableDETRHead(num_classes=num_classes, embed_dims=16,
                              share_pred_layer=share,
                              num_pred_layer=num_layers + int(two_stage),
                              as_two_stage=two_stage, test_cfg=dict(max_per_img=max_per_img))


def gt(boxes, labels):
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        labels=torch.tensor(labels, dtype=torch.int64))


META = dict(img_shape=(60, 80), scale_factor=(0.5, 0.5), ori_shape=(120, 160))


def outputs(head, bs=2, nq=10, num_layers=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_layers, bs, nq, 16, generator=gen)
    refs = [torch.rand(bs, nq, 2, generator=gen)] + [
        torch.rand(bs, nq, 4, generator=gen) * 0.5 + 0.2 for _ in range(num_layers - 1)]
    return head(hidden, refs)


def test_initialization():
    prior_bias = -math.log((1 - 0.01) / 0.01)
    shared = make_head(share=True)
    assert all(b is shared.cls_branches[0] for b in shared.cls_branches)
    assert all(b is shared.reg_branches[0] for b in shared.reg_branches)
    refine = make_head()
    assert len({id(b) for b in refine.reg_branches}) == 3
    two_stage = make_head(two_stage=True)
    assert len(two_stage.cls_branches) == 4
    for head in (shared, refine, two_stage):
        for branch in head.cls_branches:
            torch.testing.assert_close(branch.bias, torch.full((5,), prior_bias))
        for i, branch in enumerate(head.reg_branches):
            last = branch.layers[-1]
            assert torch.all(last.weight == 0) and torch.all(last.bias[:2] == 0)
            # -2 on the first (and therefore every shared) branch; 0 two-stage
            wh = -2.0 if (i == 0 or head.share_pred_layer) and not head.as_two_stage else 0.0
            assert torch.all(last.bias[2:] == wh)
        assert len(head.reg_branches[0].layers) == 3  # a 3-layer FFN


def test_boxes_relative_to_references():
    head = make_head()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    hidden = torch.randn(3, 2, 4, 16)
    refs = [torch.rand(2, 4, 2), torch.rand(2, 4, 4), torch.rand(2, 4, 4)]
    cls, boxes = head(hidden, refs)
    assert cls.shape == (3, 2, 4, 5) and boxes.shape == (3, 2, 4, 4)
    delta = head.reg_branches[0](hidden[0])
    torch.testing.assert_close(boxes[0, ..., :2],
                               (delta[..., :2] + inverse_sigmoid(refs[0])).sigmoid())
    torch.testing.assert_close(boxes[0, ..., 2:], delta[..., 2:].sigmoid())
    for d in (1, 2):
        delta = head.reg_branches[d](hidden[d])
        torch.testing.assert_close(boxes[d], (delta + inverse_sigmoid(refs[d])).sigmoid())
        torch.testing.assert_close(cls[d], head.cls_branches[d](hidden[d]))


def test_loss_terms_for_every_layer_and_the_encoder():
    head = make_head(two_stage=True)
    cls, boxes = outputs(head)
    targets = [gt([[10, 10, 40, 30], [0, 5, 80, 60]], [1, 4]), gt([[20, 20, 30, 50]], [2])]
    enc_cls, enc_boxes = torch.randn(2, 50, 5), torch.rand(2, 50, 4) * 0.5 + 0.1
    losses = head.loss_by_feat(cls, boxes, targets, [META] * 2, enc_cls, enc_boxes)
    expected = {f'{p}loss_{k}' for p in ('', 'd0.', 'd1.', 'enc_') for k in ('cls', 'bbox', 'iou')}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    # the encoder is trained class-agnostic: every target is class 0
    gt_labels, gt_boxes = head._normalized_targets(targets, [META] * 2, boxes)
    agnostic = head.loss_single(enc_cls, enc_boxes, [torch.zeros_like(t) for t in gt_labels],
                                gt_boxes, 3.0)
    torch.testing.assert_close(losses['enc_loss_cls'], agnostic[0])
    assert not torch.allclose(losses['enc_loss_cls'],
                              head.loss_single(enc_cls, enc_boxes, gt_labels, gt_boxes, 3.0)[0])


def test_targets_are_normalized_by_the_unpadded_image():
    head = make_head()
    labels, boxes = head._normalized_targets([gt([[10, 20, 50, 40]], [3])], [META],
                                             torch.zeros(1))
    torch.testing.assert_close(boxes[0], torch.tensor([[30 / 80, 30 / 60, 40 / 80, 20 / 60]]))
    with pytest.raises(ValueError, match='labels must be in'):
        head._normalized_targets([gt([[10, 20, 50, 40]], [5])], [META], torch.zeros(1))


def test_empty_ground_truth():
    head = make_head()
    cls, boxes = outputs(head)
    losses = head.loss_by_feat(cls, boxes, [gt([], []), gt([], [])], [META] * 2)
    for key, value in losses.items():
        if key.endswith('loss_cls'):
            assert value > 0  # every query is pushed towards "no object"
        else:
            assert value == 0 and value.requires_grad
    sum(losses.values()).backward()  # still differentiable


def test_one_box_gives_positive_losses():
    head = make_head()
    cls, boxes = outputs(head, bs=1)
    losses = head.loss_by_feat(cls, boxes, [gt([[5, 5, 30, 40]], [0])], [META])
    assert all(v > 0 for v in losses.values())


def test_normalizer_is_averaged_across_processes(monkeypatch):
    head = make_head()
    cls, boxes = outputs(head)
    targets = [gt([[10, 10, 40, 30]], [1]), gt([[20, 20, 30, 50]], [2])]
    local = head.loss_by_feat(cls, boxes, targets, [META] * 2)
    # pretend to be one of 2 processes, the other holding 4 boxes: mean (2 + 4) / 2 = 3
    monkeypatch.setattr(model_utils.dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(model_utils.dist, 'get_world_size', lambda: 2)
    monkeypatch.setattr(model_utils.dist, 'all_reduce', lambda t: t.add_(4))
    synced = head.loss_by_feat(cls, boxes, targets, [META] * 2)
    for key in local:
        torch.testing.assert_close(synced[key], local[key] * 2 / 3)


@pytest.mark.parametrize('nq,num_classes,expected', [(30, 5, 100), (10, 5, 50)])
def test_predict_top_k_over_query_class_pairs(nq, num_classes, expected):
    head = make_head(num_classes=num_classes)
    cls, boxes = outputs(head, nq=nq)
    results = head.predict_by_feat(cls, boxes, [META, dict(META, scale_factor=(1.0, 1.0))])
    for img_id, result in enumerate(results):
        assert len(result) == expected
        scores = cls[-1, img_id].sigmoid().flatten()
        torch.testing.assert_close(result.scores, scores.sort(descending=True)[0][:expected])
        assert torch.all(result.labels < num_classes)
    # boxes: the query's box, in input pixels, clipped, then back to the original image
    result = head.predict_by_feat(cls, boxes, [META], rescale=False)[0]
    rescaled = results[0]
    torch.testing.assert_close(rescaled.bboxes, result.bboxes / 0.5)
    assert torch.all(rescaled.bboxes[:, 0::2] <= 160) and torch.all(rescaled.bboxes[:, 1::2] <= 120)
    assert torch.all(rescaled.bboxes >= 0)
    flat = cls[-1, 0].sigmoid().flatten()
    query = (flat == result.scores[0]).nonzero()[0, 0] // num_classes
    box = boxes[-1, 0, query]
    x1, y1 = (box[0] - box[2] / 2) * 80, (box[1] - box[3] / 2) * 60
    torch.testing.assert_close(result.bboxes[0, :2],
                               torch.stack([x1.clamp(0, 80), y1.clamp(0, 60)]))


def test_predict_without_scale_factor_keeps_input_pixels():
    # a pipeline without Resize: no scale_factor in the meta means a scale factor of 1
    head = make_head(num_classes=3)
    cls, boxes = outputs(head, nq=10)
    meta = dict(img_shape=(60, 80), ori_shape=(60, 80))
    rescaled = head.predict_by_feat(cls, boxes, [meta], rescale=True)[0]
    kept = head.predict_by_feat(cls, boxes, [meta], rescale=False)[0]
    torch.testing.assert_close(rescaled.bboxes, kept.bboxes)
