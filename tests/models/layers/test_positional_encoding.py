"""SinePositionalEncoding: DETR's normalized sine encoding, (y, x) order, padding-aware;
and the proposals' sine embedding."""
import math

import torch

from ddetr.models.layers import SinePositionalEncoding, sine_embed


def test_matches_the_formula():
    F_, T = 8, 10000
    pe = SinePositionalEncoding(num_feats=F_, temperature=T)
    height, width = 3, 4
    pos = pe(torch.zeros(1, height, width, dtype=torch.bool))
    assert pos.shape == (1, 2 * F_, height, width)
    for i in range(height):
        for j in range(width):
            y = (i + 1 - 0.5) / (height + 1e-6) * 2 * math.pi
            x = (j + 1 - 0.5) / (width + 1e-6) * 2 * math.pi
            expected = []
            for coord in (y, x):  # y first
                for f in range(F_):
                    angle = coord / T ** (2 * (f // 2) / F_)
                    expected.append(math.sin(angle) if f % 2 == 0 else math.cos(angle))
            torch.testing.assert_close(pos[0, :, i, j], torch.tensor(expected),
                                       atol=1e-5, rtol=0)


def test_padding_does_not_change_the_unpadded_region():
    pe = SinePositionalEncoding(num_feats=16)
    alone = pe(torch.zeros(1, 3, 5, dtype=torch.bool))
    mask = torch.ones(1, 6, 9, dtype=torch.bool)
    mask[0, :3, :5] = False
    padded = pe(mask)
    torch.testing.assert_close(padded[..., :3, :5], alone)
    # a different image size (not padding) does change it
    assert not torch.allclose(pe(torch.zeros(1, 6, 9, dtype=torch.bool))[..., :3, :5], alone)


def test_sine_embed_layout():
    coords = torch.tensor([[0.3, 1.2, 2.0, 0.1]])  # (1, 4)
    emb = sine_embed(coords, num_feats=6, temperature=100)
    assert emb.shape == (1, 24)
    for d in range(4):
        for f in range(6):
            angle = coords[0, d].item() / 100 ** (2 * (f // 2) / 6)
            value = math.sin(angle) if f % 2 == 0 else math.cos(angle)
            assert abs(emb[0, d * 6 + f].item() - value) < 1e-6
