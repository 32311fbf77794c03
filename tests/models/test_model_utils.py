"""ddetr.models.utils: inverse sigmoid with eps clamping, box formats, relative boxes."""
import math

import pytest
import torch

from ddetr.models.utils import (
    average_across_processes,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    inverse_sigmoid,
    offset_boxes,
)


def test_inverse_sigmoid_clamps_at_eps():
    x = torch.tensor([-0.5, 0.0, 1e-7, 0.3, 1.0, 1.5])
    out = inverse_sigmoid(x)
    expected = [math.log(1e-5), math.log(1e-5), math.log(1e-5), math.log(0.3 / 0.7),
                math.log(1 / 1e-5), math.log(1 / 1e-5)]
    torch.testing.assert_close(out, torch.tensor(expected))
    y = torch.linspace(-6, 6, 13)
    torch.testing.assert_close(inverse_sigmoid(y.sigmoid()), y, atol=1e-4, rtol=0)


def test_box_formats_round_trip():
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    xyxy = box_cxcywh_to_xyxy(boxes)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), boxes)


def test_offset_boxes():
    delta = torch.tensor([[0.5, -0.2, -2.0, 1.0]])
    point = torch.tensor([[0.3, 0.6]])
    box = torch.tensor([[0.3, 0.6, 0.1, 0.2]])
    torch.testing.assert_close(offset_boxes(delta, point), torch.cat(
        [(delta[:, :2] + inverse_sigmoid(point)).sigmoid(), delta[:, 2:].sigmoid()], -1))
    torch.testing.assert_close(offset_boxes(torch.zeros(1, 4), box), box)
    with pytest.raises(ValueError, match='2 \\(points\\) or 4'):
        offset_boxes(delta, torch.zeros(1, 3))


def test_average_without_distributed_is_the_value():
    assert average_across_processes(7, torch.device('cpu')) == 7.0
