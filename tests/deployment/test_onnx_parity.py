"""The parity helpers: padding a batch as DetDataPreprocessor does, and comparing two
images' detections (equal scores may swap places, nothing else may)."""
import numpy as np
import pytest
import torch

from ddetr.deployment import compare, pad_batch
from ddetr.errors import ConfigError


def test_pad_batch_pads_bottom_right_to_the_largest_or_the_given_shape():
    a, b = torch.ones(1, 3, 5, 7), torch.full((3, 6, 4), 2.0)
    batch, sizes = pad_batch([a, b], pad_value=-1.0)
    assert batch.shape == (2, 3, 6, 7) and sizes == [(5, 7), (6, 4)]
    assert (batch[0, :, :5, :7] == 1).all() and (batch[0, :, 5:] == -1).all()
    assert (batch[1, :, :, :4] == 2).all() and (batch[1, :, :, 4:] == -1).all()
    batch, _ = pad_batch([a], (8, 8))
    assert batch.shape == (1, 3, 8, 8) and batch[0, :, 5:].abs().sum() == 0
    with pytest.raises(ConfigError, match='5x7, larger than the input 8x6'):
        pad_batch([a], (8, 6))


def test_compare_allows_equal_scores_to_swap_but_not_other_changes():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 100, (4, 4)).astype(np.float32)
    dets = np.concatenate([boxes, np.float32([[0.9], [0.5], [0.5], [0.1]])], 1)
    labels = np.array([1, 2, 3, 0])
    swapped = [0, 2, 1, 3]  # the two detections of score 0.5 in the other order
    diff = compare((dets, labels), (dets[swapped], labels[swapped]))
    assert diff == dict(box_px=0.0, score=0.0, label_mismatches=0)
    moved = dets.copy()
    moved[0, 2] += 0.01
    assert compare((dets, labels), (moved, labels))['box_px'] == pytest.approx(0.01, abs=1e-5)
    relabelled = labels.copy()
    relabelled[3] = 5
    assert compare((dets, labels), (dets, relabelled))['label_mismatches'] == 1
    # a different order of unequal scores is a score difference
    assert compare((dets, labels), (dets[::-1], labels[::-1]))['score'] > 0.5
    with pytest.raises(ValueError, match='shapes'):
        compare((dets, labels), (dets[:2], labels[:2]))
