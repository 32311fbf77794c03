"""Deformable encoder and decoder: reference points, post-norm layer order, refinement
with the gradient blocked (A.4)."""
import torch
import torch.nn.functional as F

from ddetr.models.layers import (
    MLP,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerDecoderLayer,
    DeformableDetrTransformerEncoder,
    DeformableDetrTransformerEncoderLayer,
)
from ddetr.models.utils import inverse_sigmoid

SHAPES = torch.tensor([[4, 6], [2, 3]])
STARTS = torch.tensor([0, 24])


def test_encoder_reference_points_are_pixel_centres():
    ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.75], [2 / 3, 1.0]]])
    refs = DeformableDetrTransformerEncoder.get_reference_points(SHAPES, ratios)
    assert refs.shape == (2, 30, 2, 2)
    for level, ((h, w), start) in enumerate(zip(SHAPES.tolist(), STARTS.tolist())):
        for i in range(h):
            for j in range(w):
                key = start + i * w + j
                # unpadded: the pixel's own centre, the same on every level
                expected = torch.tensor([(j + 0.5) / w, (i + 0.5) / h])
                torch.testing.assert_close(refs[0, key], expected.expand(2, 2))
                # padded: own level = own centre on the padded map; other levels = the same
                # point of the unpadded image
                torch.testing.assert_close(refs[1, key, level], expected)
                relative = expected / ratios[1, level]
                torch.testing.assert_close(refs[1, key], relative * ratios[1])


def test_encoder_layer_is_post_norm():
    torch.manual_seed(0)
    layer = DeformableDetrTransformerEncoderLayer(embed_dims=16, num_heads=4, num_levels=2,
                                                  num_points=2, feedforward_channels=32).eval()
    query, pos = torch.randn(1, 30, 16), torch.randn(1, 30, 16)
    refs = torch.rand(1, 30, 2, 2)
    out = layer(query=query, query_pos=pos, reference_points=refs, spatial_shapes=SHAPES,
                level_start_index=STARTS)
    x = layer.norm1(query + layer.self_attn(query + pos, refs, query, SHAPES, STARTS))
    expected = layer.norm2(x + layer.linear2(F.relu(layer.linear1(x))))
    torch.testing.assert_close(out, expected)


def test_decoder_layer_order():
    torch.manual_seed(0)
    layer = DeformableDetrTransformerDecoderLayer(embed_dims=16, num_heads=4, num_levels=2,
                                                  num_points=2, feedforward_channels=32).eval()
    query, pos, memory = torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.randn(2, 30, 16)
    refs = torch.rand(2, 5, 2, 2)
    out = layer(query=query, query_pos=pos, reference_points=refs, memory=memory,
                spatial_shapes=SHAPES, level_start_index=STARTS)
    x = layer.norm1(query + layer.self_attn(query + pos, query + pos, query)[0])
    x = layer.norm2(x + layer.cross_attn(x + pos, refs, memory, SHAPES, STARTS))
    expected = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
    torch.testing.assert_close(out, expected)


def make_decoder(num_layers=3):
    torch.manual_seed(0)
    return DeformableDetrTransformerDecoder(num_layers=num_layers, layer_cfg=dict(
        embed_dims=16, num_heads=4, num_levels=2, num_points=2, feedforward_channels=32,
        dropout=0.0))


def decoder_inputs(ref_dims, bs=2, nq=5):
    torch.manual_seed(1)
    ratios = torch.tensor([[1.0, 1.0], [0.5, 0.5]])[None].expand(bs, 2, 2).clone()
    return dict(query=torch.randn(bs, nq, 16), query_pos=torch.randn(bs, nq, 16),
                reference_points=torch.rand(bs, nq, ref_dims) * 0.8 + 0.1,
                memory=torch.randn(bs, 30, 16), spatial_shapes=SHAPES, level_start_index=STARTS,
                valid_ratios=ratios)


def test_decoder_scales_references_by_valid_ratios(monkeypatch):
    decoder = make_decoder(num_layers=1)
    seen = []
    cross_attn = decoder.layers[0].cross_attn
    original = cross_attn.forward
    monkeypatch.setattr(cross_attn, 'forward',
                        lambda **k: seen.append(k['reference_points']) or original(**k))
    for ref_dims in (2, 4):
        inputs = decoder_inputs(ref_dims)
        decoder(**inputs)
        ratios = inputs['valid_ratios'] if ref_dims == 2 else inputs['valid_ratios'].repeat(1, 1, 2)
        torch.testing.assert_close(seen[-1], inputs['reference_points'][:, :, None] *
                                   ratios[:, None])


def test_decoder_without_refinement_keeps_the_references():
    decoder = make_decoder()
    inputs = decoder_inputs(2)
    hidden, refs = decoder(**inputs)
    assert hidden.shape == (3, 2, 5, 16) and refs.shape == (3, 2, 5, 2)
    torch.testing.assert_close(refs, inputs['reference_points'].expand(3, -1, -1, -1))


def test_refinement_updates_boxes_and_blocks_the_gradient():
    decoder = make_decoder()
    reg_branches = torch.nn.ModuleList(MLP(16, 16, 4, 3) for _ in range(3))
    inputs = decoder_inputs(2)
    hidden, refs = decoder(**inputs, reg_branches=reg_branches)
    assert refs.shape == (3, 2, 5, 4) and not refs.requires_grad
    # A.4: b^d = sigma(delta^d + sigma^-1(b^(d-1))); a 2-d start refines (x, y) only
    prev = inputs['reference_points']
    for d in range(3):
        delta = reg_branches[d](hidden[d])
        if prev.shape[-1] == 2:
            expected = torch.cat([delta[..., :2] + inverse_sigmoid(prev), delta[..., 2:]], -1)
        else:
            expected = delta + inverse_sigmoid(prev)
        torch.testing.assert_close(refs[d], expected.sigmoid())
        prev = refs[d]
    # the boxes steer the sampling of later layers but pass them no gradient
    hidden[-1].sum().backward()
    for branch in reg_branches:
        assert all(p.grad is None for p in branch.parameters())
    assert decoder.layers[0].cross_attn.sampling_offsets.weight.grad is not None


def _grads(module, inputs, with_cp):
    """Output and gradients (parameters and float inputs) of one forward + backward in
    training mode, dropout on, from the same random state; and how many times the
    deformable attention ran."""
    for layer in module.layers:
        layer.with_cp = with_cp
    inputs = {k: v.detach().clone().requires_grad_(v.is_floating_point() and k != 'valid_ratios')
              if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in module.modules()
             if type(m).__name__ == 'MultiScaleDeformableAttention']
    module.zero_grad()
    torch.manual_seed(123)
    out = module(**inputs)
    out = out[0] if isinstance(out, tuple) else out
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    for hook in hooks:
        hook.remove()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    grads.update({name: t.grad.clone() for name, t in inputs.items()
                  if isinstance(t, torch.Tensor) and t.grad is not None})
    return out.detach(), grads, len(calls)


def test_with_cp_gives_the_same_outputs_and_gradients():
    """Activation checkpointing recomputes each layer in the backward (the attention runs
    twice per layer) and changes nothing else, dropout included."""
    torch.manual_seed(0)
    layer_cfg = dict(embed_dims=16, num_heads=4, num_levels=2, num_points=2,
                     feedforward_channels=32, dropout=0.1)
    encoder = DeformableDetrTransformerEncoder(num_layers=2, layer_cfg=layer_cfg).train()
    decoder = DeformableDetrTransformerDecoder(num_layers=2, layer_cfg=layer_cfg).train()
    ratios = torch.tensor([[1.0, 1.0], [0.5, 0.5]])[None].expand(2, 2, 2).clone()
    encoder_inputs = dict(query=torch.randn(2, 30, 16), query_pos=torch.randn(2, 30, 16),
                          spatial_shapes=SHAPES, level_start_index=STARTS, valid_ratios=ratios)
    inputs = decoder_inputs(4)
    inputs['valid_ratios'] = inputs['valid_ratios'].clone()
    for module, inputs in ((encoder, encoder_inputs), (decoder, inputs)):
        out, grads, calls = _grads(module, inputs, with_cp=False)
        out_cp, grads_cp, calls_cp = _grads(module, inputs, with_cp=True)
        assert (calls, calls_cp) == (2, 4)
        torch.testing.assert_close(out_cp, out, rtol=0, atol=0)
        assert grads_cp.keys() == grads.keys() and 'query' in grads
        for name in grads:
            torch.testing.assert_close(grads_cp[name], grads[name], msg=name)


def test_with_cp_is_a_layer_config_key():
    encoder = DeformableDetrTransformerEncoder(num_layers=1, layer_cfg=dict(
        embed_dims=16, num_heads=4, num_levels=2, with_cp=True))
    assert encoder.layers[0].with_cp
    assert not DeformableDetrTransformerEncoderLayer(embed_dims=16, num_heads=4).with_cp


def test_ffn_without_gradients_runs_in_chunks_with_the_same_result(monkeypatch):
    """Inference on CPU runs the FFN FFN_CHUNK_TOKENS tokens at a time (ReLU in place):
    the same outputs as the whole-tensor FFN that training runs, for any chunk size, and
    the input is left as it was."""
    from ddetr.models import fast_paths
    torch.manual_seed(0)
    layer = DeformableDetrTransformerEncoderLayer(embed_dims=16, num_heads=4, num_levels=2,
                                                  num_points=2, feedforward_channels=64).eval()
    query = torch.randn(2, 30, 16)
    before = query.clone()
    with torch.enable_grad():
        whole = layer.forward_ffn(query, layer.norm2)
    assert whole.requires_grad  # the autograd path
    rows = []
    layer.linear1.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    for chunk in (7, 30, 60, 1000):  # a remainder, one chunk per sample, both samples, one chunk
        monkeypatch.setattr(fast_paths, 'FFN_CHUNK_TOKENS', chunk)
        rows.clear()
        with torch.no_grad():
            chunked = layer.forward_ffn(query, layer.norm2)
        assert rows == [min(chunk, 60 - start) for start in range(0, 60, chunk)]
        torch.testing.assert_close(chunked, whole.detach(), rtol=1e-6, atol=1e-6)
        assert torch.equal(query, before)
