"""Tiny Deformable DETR models and batches for the model tests: ResNet-18 backbone, small
embedding, few layers and queries, images of 64-128 pixels, no pretrained weights."""
import copy

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from ddetr.models import DeformableDETR

VARIANTS = {
    'base': dict(with_box_refine=False, as_two_stage=False),
    'refine': dict(with_box_refine=True, as_two_stage=False),
    'twostage': dict(with_box_refine=True, as_two_stage=True),
}


def tiny_detector_cfg(variant='base', embed_dims=32, num_layers=2, num_queries=12,
                      num_classes=5, dropout=0.0, **overrides):
    layer_cfg = dict(embed_dims=embed_dims, num_heads=4, feedforward_channels=64,
                     dropout=dropout)
    cfg = dict(
        backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(1, 2, 3),
                      frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=False),
                      norm_eval=True, style='pytorch', init_cfg=None),
        neck=dict(type='MultiScaleChannelMapper', in_channels=[128, 256, 512],
                  out_channels=embed_dims, norm_cfg=dict(type='GN', num_groups=8)),
        encoder=dict(num_layers=num_layers, layer_cfg=dict(layer_cfg)),
        decoder=dict(num_layers=num_layers, layer_cfg=dict(layer_cfg)),
        bbox_head=dict(type='DeformableDETRHead', num_classes=num_classes,
                       embed_dims=embed_dims),
        num_queries=num_queries,
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               pad_size_divisor=1),
        test_cfg=dict(max_per_img=100),
        **VARIANTS[variant])
    cfg.update(overrides)
    return cfg


def tiny_detector(variant='base', seed=0, **kwargs):
    torch.manual_seed(seed)
    return DeformableDETR(**tiny_detector_cfg(variant, **kwargs))


def make_sample(height, width, boxes=(), labels=(), scale=1.0):
    """A DetDataSample of a (height, width) network input resized by ``scale`` from the
    original image; boxes (x1, y1, x2, y2) in input pixels."""
    sample = DetDataSample(metainfo=dict(
        img_shape=(height, width), ori_shape=(round(height / scale), round(width / scale)),
        scale_factor=(scale, scale)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64))
    return sample


def make_batch(model, shapes_and_boxes, seed=0, training=True):
    """Images of the given sizes through the model's DetDataPreprocessor (normalize, pad to
    the largest). shapes_and_boxes: [((H, W), boxes, labels), ...]."""
    gen = torch.Generator().manual_seed(seed)
    data = dict(inputs=[], data_samples=[])
    for (height, width), boxes, labels in shapes_and_boxes:
        data['inputs'].append(torch.randint(0, 256, (3, height, width), generator=gen,
                                            dtype=torch.uint8))
        data['data_samples'].append(make_sample(height, width, boxes, labels))
    data = model.data_preprocessor(copy.deepcopy(data), training)
    return data['inputs'], data['data_samples']


@pytest.fixture
def detector_cfg():
    return tiny_detector_cfg


@pytest.fixture
def build_detector():
    return tiny_detector


@pytest.fixture
def batch_of():
    return make_batch


@pytest.fixture
def sample_of():
    return make_sample
