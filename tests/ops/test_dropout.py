"""ddetr.ops.counter_dropout: nn.Dropout's distribution, a mask that is a pure function of
(seed, element) and its own backward (the module that uses it, fast_paths.Dropout, is
tested in tests/models/test_fast_paths.py)."""
import math

import pytest
import torch

from ddetr.ops import HAS_COUNTER_DROPOUT, counter_dropout

compiled_only = pytest.mark.skipif(not HAS_COUNTER_DROPOUT, reason='ddetr._C is not built')


def keep_mask(seed, numel, p=0.1):
    return counter_dropout(torch.ones(numel, dtype=torch.float64), p, seed) != 0


@compiled_only
@pytest.mark.parametrize('p', [0.1, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p_and_scaled(p):
    x = torch.randn(400_000)
    y = counter_dropout(x, p, seed=7)
    kept = y != 0
    n = x.numel()
    assert abs(kept.sum().item() - n * (1 - p)) < 5 * math.sqrt(n * p * (1 - p))
    assert torch.equal(y[kept], x[kept] * torch.tensor(1 / (1 - p)))  # one multiply
    assert torch.equal(y[~kept], torch.zeros_like(y[~kept]))


@compiled_only
def test_neighbouring_elements_and_seeds_are_independent():
    """A counter-based generator can fail where a sequential one would not: between
    neighbouring elements, and between the masks of nearby seeds."""
    n, p = 400_000, 0.5
    bound = 5 * math.sqrt(n * 0.25 * 0.75)  # joint 'both kept' counts, P = 1/4
    a = keep_mask(11, n, p)
    for lag in (1, 2, 7, 8, 16, 1024):
        assert abs((a[:-lag] & a[lag:]).sum().item() - (n - lag) / 4) < bound, lag
    for other in (12, 11 + 2 ** 32, -11):
        assert abs((a & keep_mask(other, n, p)).sum().item() - n / 4) < bound, other


@compiled_only
def test_the_mask_depends_only_on_seed_and_element():
    x = torch.randn(3, 50_001, dtype=torch.float64)
    ref = counter_dropout(x, 0.3, 5) != 0
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(counter_dropout(x, 0.3, 5) != 0, ref)
    finally:
        torch.set_num_threads(threads)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert torch.equal(counter_dropout(x.to(dtype), 0.3, 5) != 0, ref), dtype
    # a non-contiguous input is masked by its elements' logical order
    xt = x.t().contiguous().t()
    assert not xt.is_contiguous()
    assert torch.equal(counter_dropout(xt, 0.3, 5) != 0, ref)
    assert not torch.equal(counter_dropout(x, 0.3, 6) != 0, ref)


@compiled_only
def test_dropped_nan_and_inf_give_nan_as_torch_dropout():
    x = torch.full((2000,), float('nan'))
    x[::2] = float('inf')
    y = counter_dropout(x, 0.5, 0)
    assert torch.isnan(y[1::2]).all() and torch.isnan(y[::2][y[::2] != float('inf')]).all()


@compiled_only
def test_backward_is_the_same_mask_and_gradcheck():
    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    y = counter_dropout(x, 0.25, 3)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    kept = y != 0
    assert torch.equal(grad != 0, kept)
    assert torch.equal(grad[kept], g[kept] * torch.tensor(1 / 0.75, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda t: counter_dropout(t, 0.25, 3), (x[:40].detach()
                                                                              .requires_grad_(),))
    assert torch.autograd.gradgradcheck(lambda t: counter_dropout(t, 0.25, 3),
                                        (x[:20].detach().requires_grad_(),))
    torch.library.opcheck(torch.ops.ddetr.counter_dropout, (x.detach()[:64], 0.25, 3))


@compiled_only
def test_bad_arguments_raise_errors_that_name_them():
    with pytest.raises(ValueError, match='p must be in'):
        counter_dropout(torch.ones(4), 1.0, 0)
    with pytest.raises(ValueError, match='p must be in'):
        counter_dropout(torch.ones(4), -0.1, 0)
    with pytest.raises(TypeError, match='floating point'):
        counter_dropout(torch.ones(4, dtype=torch.int64), 0.1, 0)
