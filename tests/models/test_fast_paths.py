"""ddetr.models.fast_paths: each CPU fast path gives the plain path's values (the
max-pool and zero_masked to the bit, the dropout module nn.Dropout's distribution and
replay), and the one switch (DDETR_FAST_PATHS=0, disabled()) sends every path to plain
PyTorch, for the whole detector too."""

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmdet.models.backbones import ResNet
from torch import nn

from ddetr.models import fast_paths
from ddetr.models.fast_paths import (
    ChannelsLastMaxPool2d,
    Dropout,
    use_channels_last_max_pool,
    zero_masked,
)
from ddetr.ops import HAS_COUNTER_DROPOUT, counter_dropout

compiled_only = pytest.mark.skipif(not HAS_COUNTER_DROPOUT, reason='ddetr._C is not built')


# ------------------------------------------------------------------------ max-pool
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


# ---------------------------------------------------------------- zero_masked
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_zero_masked_is_masked_fill_with_zero(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 5).to(dtype).requires_grad_()
    mask = torch.rand(2, 7, 1) < 0.4
    assert mask.any() and not mask.all()
    out = zero_masked(x, mask)
    expected = x.masked_fill(mask, 0.0)
    assert out.dtype == dtype and torch.equal(out, expected)  # -0.0 == 0.0
    grad = torch.randn_like(out)
    got, = torch.autograd.grad(out, x, grad)
    want, = torch.autograd.grad(expected, x, grad)
    assert torch.equal(got, want)


# -------------------------------------------------------------------- dropout
def test_dropout_module_follows_torch_seed_and_training_mode():
    drop = Dropout(0.2)
    x = torch.randn(10_000)
    torch.manual_seed(0)
    a = drop(x)
    b = drop(x)
    torch.manual_seed(0)
    assert torch.equal(drop(x), a)  # reproducible from torch's seed ...
    assert not torch.equal(a, b)    # ... and a new mask every call
    assert abs((a == 0).float().mean().item() - 0.2) < 0.02
    drop.eval()
    assert drop(x) is x
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))  # p = 1: nn.Dropout's own
    assert repr(drop) == repr(torch.nn.Dropout(0.2)) and drop.state_dict() == {}


def test_dropout_module_is_replayed_by_activation_checkpointing():
    """The recomputation in the backward draws the same mask as the forward did."""
    lin1, drop, lin2 = torch.nn.Linear(16, 64), Dropout(0.3), torch.nn.Linear(64, 16)

    def block(t):
        return lin2(drop(F.relu(lin1(t))))

    x = torch.randn(32, 16, requires_grad=True)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(4)
        out = cp.checkpoint(block, x, use_reentrant=False) if with_cp else block(x)
        grads.append(torch.autograd.grad(out.square().sum(), (x, lin1.weight, lin2.weight)))
    for plain, checkpointed in zip(*grads):
        assert torch.equal(plain, checkpointed)


@compiled_only
def test_dropout_module_uses_the_counter_kernel_on_the_cpu():
    """Its mask is counter_dropout's for the seed it draws from torch's generator."""
    x = torch.randn(5000)
    torch.manual_seed(1)
    seed = int(torch.randint(1 << 62, (), dtype=torch.int64))
    torch.manual_seed(1)
    assert torch.equal(Dropout(0.4)(x), counter_dropout(x, 0.4, seed))


def test_dropout_module_compiles_without_graph_breaks():
    drop = Dropout(0.5)
    out = torch.compile(drop, fullgraph=True, backend='eager')(torch.ones(1000))
    assert set(out.unique().tolist()) <= {0.0, 2.0} and 300 < int((out == 0).sum()) < 700


# ------------------------------------------------------------------------- switch
def test_the_switch_follows_the_environment_and_the_context_manager(monkeypatch):
    monkeypatch.delenv(fast_paths.ENV, raising=False)
    assert fast_paths.enabled()
    monkeypatch.setenv(fast_paths.ENV, '0')
    assert not fast_paths.enabled()
    monkeypatch.setenv(fast_paths.ENV, '1')
    with fast_paths.disabled():
        assert not fast_paths.enabled()
        with fast_paths.disabled():
            pass
        assert not fast_paths.enabled()
    assert fast_paths.enabled()


def test_switched_off_every_path_is_plain_pytorch(monkeypatch):
    x = torch.randn(2, 3, 9, 9)
    mask = torch.rand(2, 3, 9, 1) < 0.5
    with torch.no_grad():
        assert fast_paths.backbone_input(x).is_contiguous(memory_format=torch.channels_last)
        assert fast_paths.ffn_chunk_tokens(x) == fast_paths.FFN_CHUNK_TOKENS
        with fast_paths.disabled():
            assert fast_paths.backbone_input(x) is x
            assert fast_paths.ffn_chunk_tokens(x) == 0
    calls = []
    monkeypatch.setattr(nn.MaxPool2d, 'forward', lambda self, t: calls.append('pool') or t)
    monkeypatch.setattr(fast_paths, 'counter_dropout', lambda *a: calls.append('counter'))
    monkeypatch.setattr(torch.Tensor, 'masked_fill',
                        lambda self, *a: calls.append('masked_fill') or self)
    monkeypatch.setenv(fast_paths.ENV, '0')
    ChannelsLastMaxPool2d(3, 2, 1)(x)
    Dropout(0.5).train()(x)
    zero_masked(x, mask)
    assert calls == ['pool', 'masked_fill']  # the dropout was nn.Dropout's


def test_detector_outputs_are_the_same_with_the_fast_paths_off(build_detector, batch_of):
    """The whole model in inference (channels-last backbone, FFN in chunks, max-pool,
    zero_masked): the plain paths give the same outputs up to float rounding."""
    for variant in ('base', 'twostage'):
        model = build_detector(variant).eval()
        inputs, samples = batch_of(model, [((72, 64), [[4, 6, 40, 50]], [1]),
                                           ((56, 80), [[10, 8, 60, 40]], [2])],
                                   training=False)
        with torch.no_grad():
            fast = model(inputs, samples, mode='tensor')
            with fast_paths.disabled():
                plain = model(inputs, samples, mode='tensor')
        for a, b in zip(fast, plain):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
