"""ChannelsLastMaxPool2d: nn.MaxPool2d's outputs and gradients to the bit (channels-last
forward, torch's NCHW backward), swapped into mmdet's ResNet by the detector."""
import pytest
import torch
from mmdet.models.backbones import ResNet
from torch import nn

from ddetr.models.layers.max_pool import ChannelsLastMaxPool2d, use_channels_last_max_pool

POOLS = [dict(kernel_size=3, stride=2, padding=1),  # the ResNet stem
         dict(kernel_size=2),
         dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
         dict(kernel_size=3, stride=1, padding=1, dilation=2)]


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('pool', POOLS)
def test_same_outputs_and_gradients_as_max_pool(dtype, pool):
    torch.manual_seed(0)
    # small integers after a ReLU: most windows hold ties, whose gradient goes to one input
    x = torch.randn(2, 8, 33, 17).mul(2).round().clamp(min=0).to(dtype)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = nn.MaxPool2d(**pool)(x_ref)
    out = ChannelsLastMaxPool2d(**pool)(x_new)
    assert out.is_contiguous() and torch.equal(out, ref)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    assert torch.equal(x_new.grad, x_ref.grad)


def test_other_inputs_take_max_pool_path(monkeypatch):
    calls = []
    monkeypatch.setattr(nn.MaxPool2d, 'forward', lambda self, x: calls.append(x) or x)
    pool = ChannelsLastMaxPool2d(3, 2, 1)
    pool(torch.randn(8, 10, 10))  # 3-d
    pool(torch.randn(1, 8, 10, 10).contiguous(memory_format=torch.channels_last))
    assert len(calls) == 2


def test_resnet_stem_is_swapped_and_computes_the_same():
    torch.manual_seed(0)
    resnet = ResNet(depth=18, base_channels=8, out_indices=(1,))
    resnet.eval()  # mmdet's ResNet.train() returns None
    x = torch.randn(1, 3, 64, 64)
    ref = resnet(x)[0]
    assert use_channels_last_max_pool(resnet) == 1
    assert type(resnet.maxpool) is ChannelsLastMaxPool2d
    assert resnet.maxpool.kernel_size == 3 and resnet.maxpool.stride == 2
    torch.testing.assert_close(resnet(x)[0], ref, rtol=0, atol=0)
    assert use_channels_last_max_pool(resnet) == 0  # already swapped
