"""MultiScaleChannelMapper (A.2) and BiFPN."""
import pytest
import torch

from ddetr.models.necks import BiFPN, MultiScaleChannelMapper


def backbone_maps(bs=2, height=97, width=70):
    """C3-C5 of a (height, width) image, sized as ResNet makes them (ceil halving)."""
    sizes = []
    h, w = height, width
    for _ in range(5):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return [torch.randn(bs, c, *hw) for c, hw in zip((16, 24, 40), sizes[2:])]


def test_channel_mapper_levels_and_parameters():
    neck = MultiScaleChannelMapper(in_channels=[16, 24, 40], out_channels=32, num_outs=4,
                                   norm_cfg=dict(type='GN', num_groups=8))
    inputs = backbone_maps()
    outs = neck(inputs)
    assert [o.shape[1:] for o in outs] == [(32,) + tuple(x.shape[-2:]) for x in inputs] + [
        (32, (inputs[-1].shape[-2] + 1) // 2, (inputs[-1].shape[-1] + 1) // 2)]
    # 1x1 convs on C3-C5, a 3x3 stride-2 conv on C5 itself, all with bias, each + GN
    assert [tuple(m.conv.weight.shape) for m in neck.convs] == [(32, c, 1, 1) for c in (16, 24, 40)]
    extra = neck.extra_convs[0].conv
    assert tuple(extra.weight.shape) == (32, 40, 3, 3) and extra.stride == (2, 2)
    for module in list(neck.convs) + list(neck.extra_convs):
        assert module.conv.bias is not None and torch.all(module.conv.bias == 0)
        assert isinstance(module.norm, torch.nn.GroupNorm) and module.norm.num_groups == 8
        assert not module.with_activation
    # the paper's R50 sizes: 3 x (1x1 + bias + GN) and one (3x3 + bias + GN)
    r50 = MultiScaleChannelMapper(in_channels=[512, 1024, 2048], out_channels=256, num_outs=4)
    expected = sum(c * 256 + 256 + 512 for c in (512, 1024, 2048)) + 2048 * 256 * 9 + 256 + 512
    assert sum(p.numel() for p in r50.parameters()) == expected


def test_channel_mapper_single_scale_uses_c5():
    neck = MultiScaleChannelMapper(in_channels=[16, 24, 40], out_channels=32, num_outs=1,
                                   norm_cfg=dict(type='GN', num_groups=8))
    inputs = backbone_maps()
    (out,) = neck(inputs)
    assert out.shape[-2:] == inputs[-1].shape[-2:]
    assert len(neck.convs) == 1 and neck.convs[0].conv.in_channels == 40
    assert len(neck.extra_convs) == 0
    with pytest.raises(ValueError, match='expects 3 inputs'):
        neck(inputs[:2])


def test_channel_mapper_more_extra_levels_chain():
    neck = MultiScaleChannelMapper(in_channels=[16, 24, 40], out_channels=32, num_outs=5,
                                   norm_cfg=dict(type='GN', num_groups=8))
    outs = neck(backbone_maps())
    assert neck.extra_convs[1].conv.in_channels == 32
    assert outs[4].shape[-2:] == ((outs[3].shape[-2] + 1) // 2, (outs[3].shape[-1] + 1) // 2)


def test_bifpn_shapes_fusion_and_gradient():
    neck = BiFPN(in_channels=[16, 24, 40], out_channels=32, num_outs=4, num_repeats=2,
                 norm_cfg=dict(type='GN', num_groups=8))
    inputs = backbone_maps(height=75, width=101)
    mapped = neck.input_proj(inputs)
    outs = neck(inputs)
    assert [o.shape for o in outs] == [m.shape for m in mapped]
    # every level depends on every input: the top-down and bottom-up paths connect them
    for level in range(4):
        x = [t.clone().requires_grad_() for t in inputs]
        neck(x)[level].sum().backward()
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in x)
    layer = neck.layers[0]
    assert [len(node.weights) for node in layer.top_down] == [2, 2, 2]
    assert [len(node.weights) for node in layer.bottom_up] == [3, 3, 2]
    with pytest.raises(ValueError, match='at least 2 levels'):
        BiFPN(in_channels=[16], out_channels=32, num_outs=1)
