"""CPUAmpOptimWrapper autocasts to bfloat16 only where the CPU computes it in hardware."""
import pytest
import torch
from torch import nn

from ddetr.engine import optim_wrapper as module
from ddetr.engine.optim_wrapper import CPUAmpOptimWrapper


def _linear_output_dtype(wrapper, model):
    with wrapper.optim_context(model):
        return model(torch.ones(2, 4)).dtype


@pytest.mark.parametrize('native,force,expected', [
    (True, False, torch.bfloat16),
    (False, False, torch.float32),  # emulated bfloat16: float32 instead
    (False, True, torch.bfloat16),
])
def test_bfloat16_autocast_only_with_hardware_support(monkeypatch, native, force, expected):
    monkeypatch.setattr(module, 'cpu_has_fast_bfloat16', lambda: native)
    model = nn.Linear(4, 3)
    wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                 force=force)
    assert _linear_output_dtype(wrapper, model) == expected
    assert model.weight.dtype == torch.float32  # parameters stay float32


def test_says_that_it_trains_in_float32(monkeypatch):
    messages = []
    monkeypatch.setattr(module, 'print_log', lambda msg, **kw: messages.append(msg))
    monkeypatch.setattr(module, 'cpu_has_fast_bfloat16', lambda: False)
    model = nn.Linear(4, 3)
    CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert len(messages) == 1 and 'no hardware bfloat16' in messages[0]
    monkeypatch.setattr(module, 'cpu_has_fast_bfloat16', lambda: True)
    CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert len(messages) == 1  # nothing to say where bfloat16 is native


def test_hardware_check_matches_torch():
    assert module.cpu_has_fast_bfloat16() == torch.ops.mkldnn._is_mkldnn_bf16_supported()
