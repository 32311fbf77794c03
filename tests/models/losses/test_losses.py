"""Focal, L1 and GIoU losses against their formulas."""
import torch

from ddetr.models.losses import GIoULoss, L1Loss, SigmoidFocalLoss


def test_focal_loss_formula_and_background():
    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.5, 0.1, 0.7]])
    labels = torch.tensor([1, 3])  # the second row is "no object"
    loss = SigmoidFocalLoss(alpha=0.25, gamma=2.0, loss_weight=2.0)(logits, labels, 4.0)
    p = logits.sigmoid()
    targets = torch.tensor([[0., 1., 0.], [0., 0., 0.]])
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    expected = 2.0 * (-alpha_t * (1 - p_t) ** 2 * p_t.log()).sum() / 4.0
    torch.testing.assert_close(loss, expected)


def test_l1_and_giou():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 2.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 2.0]])
    torch.testing.assert_close(L1Loss(loss_weight=5.0)(pred, target, 2.0),
                               torch.tensor(5.0 * 4.0 / 2.0))
    # box 1: IoU 1/7, enclosing area 9, union 7 -> GIoU = 1/7 - 2/9; box 2: GIoU 1
    expected = 2.0 * (1 - (1 / 7 - 2 / 9)) / 2.0
    torch.testing.assert_close(GIoULoss(loss_weight=2.0)(pred, target, 2.0),
                               torch.tensor(expected), atol=1e-5, rtol=0)


def test_empty_inputs_give_zero_attached_to_the_graph():
    pred = torch.zeros(0, 4, requires_grad=True)
    for loss in (L1Loss()(pred, torch.zeros(0, 4), 1.0), GIoULoss()(pred, torch.zeros(0, 4), 1.0)):
        assert loss.item() == 0 and loss.requires_grad
