"""GroupedOptimWrapperConstructor: mmengine's parameter-wise settings, one group per
distinct setting, the same update for every parameter."""
import pytest
import torch
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from ddetr.engine import GroupedOptimWrapperConstructor


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
        self.sampling_offsets = nn.Linear(4, 8)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


OPTIMIZER = dict(type='AdamW', lr=1e-3, weight_decay=0.05, foreach=True)
PARAMWISE = dict(norm_decay_mult=0.0,
                 custom_keys={'backbone': dict(lr_mult=0.1), 'sampling_offsets': dict(lr_mult=0.1)})


def settings_of(wrapper):
    """{id(param): (lr, weight_decay)} over all groups; each param once."""
    seen = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            assert id(p) not in seen, 'a parameter is in two groups'
            seen[id(p)] = (group['lr'], group['weight_decay'])
    return seen


def build(constructor, model, optimizer=OPTIMIZER):
    return constructor(dict(optimizer=dict(optimizer)), dict(PARAMWISE))(model)


def test_same_settings_per_parameter_in_few_groups():
    model = Tiny()
    per_param = build(DefaultOptimWrapperConstructor, model)
    grouped = build(GroupedOptimWrapperConstructor, model)
    trainable = [p for p in model.parameters() if p.requires_grad]  # mmengine skips frozen
    assert len(per_param.optimizer.param_groups) == len(trainable)
    assert settings_of(grouped) == settings_of(per_param)
    # backbone and sampling offsets (lr x 0.1; custom_keys take precedence over
    # norm_decay_mult in mmengine), head linears, head norm (no decay)
    distinct = set(settings_of(per_param).values())
    assert len(grouped.optimizer.param_groups) == len(distinct) == 3
    # the first group (whose lr mmengine logs) is mmengine's first
    assert grouped.optimizer.param_groups[0]['lr'] == per_param.optimizer.param_groups[0]['lr']


@pytest.mark.parametrize('fused', [False, True])
def test_same_update_as_one_group_per_parameter(fused):
    """Three AdamW steps from the same gradients give the same parameters to the bit."""
    torch.manual_seed(0)
    model_a = Tiny()
    model_b = Tiny()
    model_b.load_state_dict(model_a.state_dict())
    optimizer = dict(OPTIMIZER, foreach=None, fused=fused)
    opt_a = build(DefaultOptimWrapperConstructor, model_a, optimizer)
    opt_b = build(GroupedOptimWrapperConstructor, model_b, optimizer)
    for _ in range(3):
        for pa, pb in zip(model_a.parameters(), model_b.parameters()):
            if pa.requires_grad:
                pa.grad = torch.randn_like(pa)
                pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(model_a.head[0].weight, Tiny().head[0].weight)


def test_without_paramwise_cfg_one_group():
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-3))
    wrapper = GroupedOptimWrapperConstructor(cfg)(Tiny())
    assert len(wrapper.optimizer.param_groups) == 1
