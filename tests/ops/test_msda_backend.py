"""ddetr.ops.msda_backend / DDETR_MSDA_BACKEND (the minimal selector the ONNX export uses)
and level_shapes (symbolic level sizes while tracing)."""
import warnings

import pytest
import torch

from ddetr.ops import (
    extension,
    level_shapes,
    level_starts,
    ms_deform_attn,
    msda_backend,
    msda_fallback,
)


def make_inputs():
    gen = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[4, 3], [2, 2]])
    starts = torch.tensor([0, 12])
    value = torch.randn(1, 16, 2, 4, generator=gen)
    locations = torch.rand(1, 5, 2, 2, 3, 2, generator=gen)
    weights = torch.rand(1, 5, 2, 2, 3, generator=gen)
    return value, shapes, starts, locations, weights


@pytest.fixture
def count_fallback(monkeypatch):
    calls = []
    real = msda_fallback.ms_deform_attn_pytorch
    monkeypatch.setattr(msda_fallback, 'ms_deform_attn_pytorch',
                        lambda *a: calls.append(1) or real(*a))
    monkeypatch.delenv('DDETR_MSDA_BACKEND', raising=False)
    return calls


@pytest.mark.skipif(not extension.HAS_COMPILED_OP, reason='needs the compiled op')
def test_context_manager_forces_the_pytorch_path_and_restores(count_fallback):
    inputs = make_inputs()
    ms_deform_attn(*inputs)
    assert count_fallback == []  # the compiled kernel by default
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a chosen backend is no "fallback" warning
        with msda_backend('pytorch'):
            out = ms_deform_attn(*inputs)
    assert count_fallback == [1]
    torch.testing.assert_close(out, ms_deform_attn(*inputs))
    assert count_fallback == [1]  # back to the kernel after the block


@pytest.mark.skipif(not extension.HAS_COMPILED_OP, reason='needs the compiled op')
def test_environment_variable(count_fallback, monkeypatch):
    monkeypatch.setenv('DDETR_MSDA_BACKEND', 'pytorch')
    ms_deform_attn(*make_inputs())
    assert count_fallback == [1]
    with msda_backend('auto'):  # the context manager wins over the variable
        ms_deform_attn(*make_inputs())
    assert count_fallback == [1]


def test_unknown_backend_is_named(monkeypatch):
    with pytest.raises(ValueError, match="'cuda_fast'.*msda_backend"):
        with msda_backend('cuda_fast'):
            pass
    monkeypatch.setenv('DDETR_MSDA_BACKEND', 'nope')
    with pytest.raises(ValueError, match='DDETR_MSDA_BACKEND'):
        ms_deform_attn(*make_inputs())


def test_level_shapes_are_ints_or_symbolic_while_tracing(monkeypatch):
    shapes, starts = torch.tensor([[4, 3], [2, 2]]), torch.tensor([0, 12])
    assert level_shapes(shapes) == [(4, 3), (2, 2)]
    assert level_starts(starts) == [0, 12]
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    traced = level_shapes(shapes)
    assert all(isinstance(h, torch.Tensor) and h.dim() == 0 for hw in traced for h in hw)
    assert [(int(h), int(w)) for h, w in traced] == [(4, 3), (2, 2)]
    assert [int(s) for s in level_starts(starts)] == [0, 12]
