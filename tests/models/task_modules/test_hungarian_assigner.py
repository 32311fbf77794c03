"""HungarianAssigner and its costs: formulas, optimality, batch-wise = image-wise, images
without objects."""
import itertools

import torch
from torchvision.ops import generalized_box_iou

from ddetr.models.task_modules import BBoxL1Cost, FocalLossCost, GIoUCost, HungarianAssigner
from ddetr.models.utils import box_cxcywh_to_xyxy


def paper_assigner():
    return HungarianAssigner(match_costs=[dict(type='FocalLossCost', weight=2.0),
                                          dict(type='BBoxL1Cost', weight=5.0),
                                          dict(type='GIoUCost', weight=2.0)])


def random_predictions(gen, bs, nq, num_classes=7):
    logits = torch.randn(bs, nq, num_classes, generator=gen)
    boxes = torch.cat([torch.rand(bs, nq, 2, generator=gen) * 0.6 + 0.2,
                       torch.rand(bs, nq, 2, generator=gen) * 0.3 + 0.05], -1)
    return logits, boxes


def random_targets(gen, num_gts, num_classes=7):
    labels = torch.randint(0, num_classes, (num_gts,), generator=gen)
    boxes = torch.cat([torch.rand(num_gts, 2, generator=gen) * 0.6 + 0.2,
                       torch.rand(num_gts, 2, generator=gen) * 0.3 + 0.05], -1)
    return labels, boxes


def test_costs_match_their_formulas():
    gen = torch.Generator().manual_seed(0)
    logits, boxes = random_predictions(gen, 1, 5)
    labels, gt_boxes = random_targets(gen, 3)
    kwargs = dict(pred_logits=logits[0], pred_boxes=boxes[0], gt_labels=labels, gt_boxes=gt_boxes)
    p = logits[0].sigmoid()[:, labels]
    focal = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log() - 0.75 * p ** 2 * -(1 - p + 1e-8).log()
    torch.testing.assert_close(FocalLossCost(weight=2.0)(**kwargs), 2 * focal)
    l1 = (boxes[0][:, None] - gt_boxes[None]).abs().sum(-1)
    torch.testing.assert_close(BBoxL1Cost(weight=5.0)(**kwargs), 5 * l1)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes[0]), box_cxcywh_to_xyxy(gt_boxes))
    torch.testing.assert_close(GIoUCost(weight=2.0)(**kwargs), -2 * giou)


def test_matching_is_optimal():
    gen = torch.Generator().manual_seed(1)
    assigner = paper_assigner()
    logits, boxes = random_predictions(gen, 1, 5)
    labels, gt_boxes = random_targets(gen, 3)
    query_inds, gt_inds = assigner.assign(logits[0], boxes[0], labels, gt_boxes)
    cost = assigner._cost_matrix(logits[0], boxes[0], labels, gt_boxes)
    best = min(sum(cost[q, g] for g, q in enumerate(perm))
               for perm in itertools.permutations(range(5), 3))
    assert sorted(gt_inds.tolist()) == [0, 1, 2] and len(set(query_inds.tolist())) == 3
    torch.testing.assert_close(cost[query_inds, gt_inds].sum(), best)


def test_batch_wise_equals_image_wise_with_empty_images():
    gen = torch.Generator().manual_seed(2)
    assigner = paper_assigner()
    num_gts = [3, 0, 6, 1]
    logits, boxes = random_predictions(gen, 4, 9)
    targets = [random_targets(gen, n) for n in num_gts]
    batch = assigner.assign_batch(logits, boxes, [t[0] for t in targets],
                                  [t[1] for t in targets])
    for img_id, (labels, gt_boxes) in enumerate(targets):
        query_inds, gt_inds = assigner.assign(logits[img_id], boxes[img_id], labels, gt_boxes)
        assert torch.equal(batch[img_id][0], query_inds) and torch.equal(batch[img_id][1], gt_inds)
        assert len(query_inds) == num_gts[img_id]
    assert len(batch[1][0]) == 0 and batch[1][0].dtype == torch.int64
    # a batch with no objects at all
    empty = assigner.assign_batch(logits, boxes, [torch.zeros(0, dtype=torch.int64)] * 4,
                                  [torch.zeros(0, 4)] * 4)
    assert all(len(q) == 0 and len(g) == 0 for q, g in empty)


def test_assignment_builds_no_autograd_graph():
    """The costs are computed without autograd: nothing is saved for a backward even
    when the predictions require gradients (each op of a recorded graph saves tensors)."""
    gen = torch.Generator().manual_seed(3)
    logits, boxes = random_predictions(gen, 1, 4)
    logits.requires_grad_()
    boxes.requires_grad_()
    labels, gt_boxes = random_targets(gen, 2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        paper_assigner().assign(logits[0], boxes[0], labels, gt_boxes)
        paper_assigner().assign_batch(logits, boxes, [labels], [gt_boxes])
    assert saved == []


def test_non_finite_predictions_still_match():
    """Diverged predictions must not crash the matcher: the non-finite loss is what stops
    training (with the iteration and the loss terms)."""
    gen = torch.Generator().manual_seed(4)
    logits, boxes = random_predictions(gen, 1, 6)
    boxes[0, :3] = float('nan')
    logits[0, 3] = float('inf')
    labels, gt_boxes = random_targets(gen, 2)
    query_inds, gt_inds = paper_assigner().assign(logits[0], boxes[0], labels, gt_boxes)
    assert sorted(gt_inds.tolist()) == [0, 1] and len(set(query_inds.tolist())) == 2
    assert all(q >= 3 for q in query_inds.tolist())  # the NaN boxes (0..2) lose
