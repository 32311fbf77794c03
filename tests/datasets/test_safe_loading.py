"""Bad data through mmdet's real CocoDataset pipeline: missing and corrupt files,
grayscale and RGBA images, images without objects, degenerate and outside boxes."""
import json
import logging

import cv2
import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.logging import MMLogger
from torch.utils.data import DataLoader

from ddetr.datasets import ImageLoadError, LoadImageFromFileSafe, SafeCocoDataset, load_image
from ddetr.setup_env import register_all_modules

W, H = 24, 16  # every image in the tiny set


@pytest.fixture(autouse=True)
def _registered():
    register_all_modules()


@pytest.fixture
def warnings_log():
    """Warnings logged through mmengine's current logger."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _colour_image():
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30  # B, G, R
    return img


@pytest.fixture
def tiny_coco(tmp_path):
    """A 7-image COCO set: good, gray, rgba, no-objects, corrupt, empty file, missing."""
    img_dir = tmp_path / 'img'
    img_dir.mkdir()
    cv2.imwrite(str(img_dir / 'good.jpg'), _colour_image())
    cv2.imwrite(str(img_dir / 'gray.png'), np.full((H, W), 77, np.uint8))
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[...] = (10, 20, 30, 128)  # BGRA
    cv2.imwrite(str(img_dir / 'rgba.png'), rgba)
    cv2.imwrite(str(img_dir / 'noobj.jpg'), _colour_image())
    (img_dir / 'corrupt.jpg').write_bytes(b'\xff\xd8 definitely not a jpeg ' * 8)
    (img_dir / 'empty.jpg').write_bytes(b'')
    names = ['good.jpg', 'gray.png', 'rgba.png', 'noobj.jpg', 'corrupt.jpg', 'empty.jpg',
             'missing.jpg']
    images = [dict(id=i + 1, file_name=n, width=W, height=H) for i, n in enumerate(names)]
    boxes = {  # image id -> boxes [x, y, w, h]
        1: [[2, 2, 10, 8],      # fine
            [5, 5, 0, 4],       # zero width: dropped
            [30, 2, 5, 5],      # right of the image: dropped
            [20, 10, 10, 10]],  # sticks out: clipped to [20, 10, 4, 6]
        2: [[1, 1, 5, 5]], 3: [[1, 1, 5, 5]], 5: [[1, 1, 5, 5]], 6: [[1, 1, 5, 5]],
        7: [[1, 1, 5, 5]]}
    anns = [dict(id=k, image_id=img_id, category_id=1, bbox=b, area=b[2] * b[3], iscrowd=0)
            for k, (img_id, b) in enumerate(((i, b) for i, bs in boxes.items() for b in bs), 1)]
    ann_file = tmp_path / 'ann.json'
    ann_file.write_text(json.dumps(dict(images=images, annotations=anns,
                                        categories=[dict(id=1, name='thing')])))
    return dict(root=tmp_path, img_dir=img_dir, ann_file=str(ann_file), names=names)


def _dataset(tiny_coco, test_mode):
    return SafeCocoDataset(
        ann_file=tiny_coco['ann_file'], data_prefix=dict(img=str(tiny_coco['img_dir'])),
        metainfo=dict(classes=('thing',)), test_mode=test_mode,
        filter_cfg=dict(filter_empty_gt=False), pipeline=[
            dict(type='LoadImageFromFileSafe'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='PackDetInputs')])


def _index(dataset, name):
    return next(i for i in range(len(dataset))
                if dataset.get_data_info(i)['img_path'].endswith(name))


# ------------------------------------------------------------------------ load_image
def test_load_image_colour_conversions(tiny_coco):
    gray = load_image(str(tiny_coco['img_dir'] / 'gray.png'))
    assert gray.shape == (H, W, 3) and gray.dtype == np.uint8 and (gray == 77).all()
    rgba = load_image(str(tiny_coco['img_dir'] / 'rgba.png'))
    assert rgba.shape == (H, W, 3) and (rgba == np.array([10, 20, 30], np.uint8)).all()
    rgba_kept = load_image(str(tiny_coco['img_dir'] / 'rgba.png'), color_type='unchanged')
    assert rgba_kept.shape == (H, W, 3)  # alpha dropped even when decoded unchanged


@pytest.mark.parametrize('name, reason', [('missing.jpg', 'not found'),
                                          ('corrupt.jpg', 'cannot decode'),
                                          ('empty.jpg', 'empty')])
def test_load_image_errors_name_the_file(tiny_coco, name, reason):
    path = str(tiny_coco['img_dir'] / name)
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(path)
    assert path in str(info.value)


def test_transform_skips_bad_file_with_one_warning(tiny_coco, warnings_log):
    path = str(tiny_coco['img_dir'] / 'corrupt.jpg')
    transform = LoadImageFromFileSafe()
    assert transform(dict(img_path=path)) is None
    assert transform(dict(img_path=path)) is None
    mentions = [m for m in warnings_log if path in m]
    assert len(mentions) == 1 and 'skipping' in mentions[0]


def test_transform_warns_on_size_mismatch(tiny_coco, warnings_log):
    path = str(tiny_coco['img_dir'] / 'good.jpg')
    results = LoadImageFromFileSafe(to_float32=True)(dict(img_path=path, height=H + 1, width=W))
    assert results['img'].dtype == np.float32 and results['img_shape'] == (H, W)
    assert any('differs from the annotated' in m and path in m for m in warnings_log)


# --------------------------------------------------------------------------- boxes
def test_boxes_clipped_and_dropped_with_a_warning(tiny_coco, warnings_log):
    dataset = _dataset(tiny_coco, test_mode=False)
    dataset.full_init()
    summary = [m for m in warnings_log if tiny_coco['ann_file'] in m and 'dropped' in m]
    assert len(summary) == 1
    assert '1 zero width, height or area' in summary[0]
    assert '1 outside the image' in summary[0] and 'clipped 1 boxes' in summary[0]
    good = dataset.get_data_info(_index(dataset, 'good.jpg'))
    assert [inst['bbox'] for inst in good['instances']] == [[2, 2, 12, 10], [20, 10, 24, 16]]


def test_boxes_of_the_pipeline_stay_inside_the_image(tiny_coco):
    dataset = _dataset(tiny_coco, test_mode=True)
    boxes = dataset[_index(dataset, 'good.jpg')]['data_samples'].gt_instances.bboxes.tensor
    assert boxes.shape == (2, 4)
    assert (boxes[:, 0::2] <= W).all() and (boxes[:, 1::2] <= H).all() and (boxes >= 0).all()


# --------------------------------------------------------------------- train / test
@pytest.mark.parametrize('test_mode', [False, True])
def test_good_gray_rgba_and_empty_images_load(tiny_coco, test_mode):
    dataset = _dataset(tiny_coco, test_mode=test_mode)
    for name, num_boxes in (('good.jpg', 2), ('gray.png', 1), ('rgba.png', 1),
                            ('noobj.jpg', 0)):
        item = dataset[_index(dataset, name)]
        assert item['inputs'].shape == (3, H, W) and item['inputs'].dtype == torch.uint8
        assert item['data_samples'].img_path.endswith(name)
        assert item['data_samples'].gt_instances.bboxes.tensor.shape == (num_boxes, 4)


@pytest.mark.parametrize('name', ['missing.jpg', 'corrupt.jpg', 'empty.jpg'])
def test_training_skips_bad_images_with_a_warning(tiny_coco, warnings_log, name):
    dataset = _dataset(tiny_coco, test_mode=False)
    bad = str(tiny_coco['img_dir'] / name)
    item = dataset[_index(dataset, name)]  # mmengine draws another image instead
    assert item['data_samples'].img_path != bad
    assert item['inputs'].shape == (3, H, W)
    assert any(bad in m and 'skipping' in m for m in warnings_log)


@pytest.mark.parametrize('name, reason', [('missing.jpg', 'not found'),
                                          ('corrupt.jpg', 'cannot decode')])
def test_testing_stops_naming_the_file(tiny_coco, name, reason):
    dataset = _dataset(tiny_coco, test_mode=True)
    bad = str(tiny_coco['img_dir'] / name)
    with pytest.raises(ImageLoadError, match=reason) as info:
        dataset[_index(dataset, name)]
    assert bad in str(info.value) and 'test mode' in str(info.value)


def test_testing_error_crosses_dataloader_workers(tiny_coco):
    dataset = _dataset(tiny_coco, test_mode=True)
    bad = str(tiny_coco['img_dir'] / 'missing.jpg')
    subset = torch.utils.data.Subset(dataset, [_index(dataset, 'missing.jpg')])
    loader = DataLoader(subset, batch_size=1, num_workers=1, collate_fn=pseudo_collate)
    batches = iter(loader)
    with pytest.raises(ImageLoadError, match='not found') as info:
        next(batches)
    assert bad in str(info.value)
    with pytest.raises(StopIteration):  # the loader ends and stops its worker now
        next(batches)


def test_pipeline_errors_get_the_file_name(tiny_coco):
    dataset = SafeCocoDataset(
        ann_file=tiny_coco['ann_file'], data_prefix=dict(img=str(tiny_coco['img_dir'])),
        metainfo=dict(classes=('thing',)), test_mode=False,
        pipeline=[dict(type='LoadImageFromFile')])  # mmcv's loader raises on its own
    bad = str(tiny_coco['img_dir'] / 'missing.jpg')
    with pytest.raises(FileNotFoundError) as info:
        dataset[_index(dataset, 'missing.jpg')]
    assert f'while preparing image {bad}' in getattr(info.value, '__notes__', [])
