"""Geometry stays float32 under mixed precision: the sampling locations every deformable
attention call hands to the op, and the two-stage proposals, are float32 under autocast
and equal the float32 model's to float32 rounding (A.4 init: the offset projections'
weights are zero, so the locations depend on geometry only, not on the features)."""
import pytest
import torch

import ddetr.models.layers.multi_scale_deformable_attention as msda_module

SHAPES = [((96, 80), [[10, 12, 50, 70]], [1]), ((64, 112), [[20, 10, 100, 60]], [4])]
# far below bfloat16's / float16's resolution (2^-8 / 2^-11 near 1), float32 rounding only
TOLERANCE = dict(rtol=1e-6, atol=1e-6)
PRECISIONS = [pytest.param('cpu', torch.bfloat16, id='cpu-bfloat16'),
              pytest.param('cuda', torch.float16, id='cuda-float16')]


def record(model, inputs, samples, device, dtype=None):
    """Sampling locations of every attention call and, two-stage, the proposals."""
    calls, proposals = [], []
    original_op = msda_module.ms_deform_attn
    monkeypatch = pytest.MonkeyPatch()

    def spy(value, spatial_shapes, level_start_index, sampling_locations, *args, **kwargs):
        calls.append(sampling_locations.detach().clone())
        return original_op(value, spatial_shapes, level_start_index, sampling_locations,
                           *args, **kwargs)

    monkeypatch.setattr(msda_module, 'ms_deform_attn', spy)
    if model.as_two_stage:
        original_proposals = type(model).encoder_proposals

        def proposals_spy(*args, **kwargs):
            output_memory, output_proposals = original_proposals(model, *args, **kwargs)
            proposals.append(output_proposals.detach().clone())
            return output_memory, output_proposals

        monkeypatch.setattr(model, 'encoder_proposals', proposals_spy)
    try:
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            model._forward(inputs, samples)
    finally:
        monkeypatch.undo()
    return calls, proposals


@pytest.mark.parametrize('device,dtype', PRECISIONS)
@pytest.mark.parametrize('variant', ['base', 'refine', 'twostage'])
def test_sampling_locations_are_float32_under_autocast(variant, device, dtype, build_detector,
                                                       batch_of, monkeypatch):
    if device == 'cuda' and not torch.cuda.is_available():
        pytest.skip('needs a CUDA GPU')
    model = build_detector(variant).eval()
    if model.as_two_stage:
        # fixed float32 proposal scores, so both runs pick the same top-k proposals and the
        # decoder's locations are comparable too (the pick itself is not geometry)
        enc_branch = model.bbox_head.cls_branches[model.decoder.num_layers]
        monkeypatch.setattr(enc_branch, 'forward', lambda x: torch.linspace(
            0, 1, x.shape[1], device=x.device)[None, :, None].expand(
                x.shape[0], -1, model.bbox_head.num_classes))
    model = model.to(device)
    inputs, samples = batch_of(model, SHAPES, training=False)
    inputs = inputs.to(device)
    ref_calls, ref_proposals = record(model, inputs, samples, device)
    amp_calls, amp_proposals = record(model, inputs, samples, device, dtype)

    num_layers = model.encoder.num_layers + model.decoder.num_layers
    assert len(ref_calls) == len(amp_calls) == num_layers
    for layer_id, (ref, amp) in enumerate(zip(ref_calls, amp_calls)):
        part = 'encoder' if layer_id < model.encoder.num_layers else 'decoder'
        assert amp.dtype == torch.float32, f'{part} call {layer_id}: {amp.dtype} locations'
        torch.testing.assert_close(amp, ref, **TOLERANCE,
                                   msg=lambda m: f'{part} call {layer_id}: {m}')
    if model.as_two_stage:
        (ref,), (amp,) = ref_proposals, amp_proposals
        assert amp.dtype == torch.float32
        torch.testing.assert_close(amp, ref, **TOLERANCE)
