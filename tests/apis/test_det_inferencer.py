"""DetInferencer: MMDetection's call and result format over ddetr's model, on a shrunken
quick-start model (random weights) and small generated images. The same detections as
init_detector + inference_detector; a batch gives what each image gets alone; pictures and
JSON where MMDetection puts them; class names from the checkpoint, .safetensors included."""
import json
import os
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch

from ddetr.apis import DetInferencer, inference_detector, init_detector
from ddetr.engine.checkpoint import save_safetensors
from ddetr.errors import CheckpointError, DdetrError, ImageLoadError
from ddetr.models import DeformableDETR

CLASSES = tuple(f'thing{i}' for i in range(6))

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def weights(tiny_config, tmp_path_factory):
    """The same random weights as .pth and as .safetensors, class names in the meta."""
    folder = tmp_path_factory.mktemp('ckpt')
    model = init_detector(tiny_config, None, seed=3)
    # random init gives every (query, class) nearly the prior score: spread the scores as a
    # trained model's, so the order of the detections does not hang on rounding
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for branch in model.bbox_head.cls_branches:
            branch.weight.add_(torch.randn(branch.weight.shape, generator=gen) * 0.05)
            branch.bias.copy_(torch.rand(branch.bias.shape, generator=gen) * 4 - 3)
    meta = {'dataset_meta': {'classes': CLASSES}}
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, folder / 'tiny.pth')
    save_safetensors(str(folder / 'tiny.safetensors'), model.state_dict(), meta)
    return dict(pth=str(folder / 'tiny.pth'), safetensors=str(folder / 'tiny.safetensors'))


def make_image(height, width, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    cv2.rectangle(img, (10, 15), (width // 2, height // 2), (0, 0, 255), -1)
    return img


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """A folder of three images: two of one size, one of another aspect ratio."""
    folder = tmp_path_factory.mktemp('images')
    for name, (height, width), seed in (('a.jpg', (96, 128), 1), ('b.png', (120, 80), 2),
                                        ('c.png', (96, 128), 3)):
        cv2.imwrite(str(folder / name), make_image(height, width, seed))
    (folder / 'notes.txt').write_text('not an image')
    return str(folder)


@pytest.fixture(scope='module')
def inferencer(tiny_config, weights):
    return DetInferencer(model=tiny_config, weights=weights['pth'], device='cpu')


def as_arrays(prediction):
    return {k: np.asarray(prediction[k]) for k in ('labels', 'scores', 'bboxes')}


def test_builds_ddetrs_model_and_matches_inference_detector(inferencer, tiny_config, weights,
                                                            images):
    assert isinstance(inferencer.model, DeformableDETR)  # ddetr's, not mmdet's class
    assert inferencer.dataset_meta['classes'] == CLASSES
    image = osp.join(images, 'a.jpg')
    result = inferencer(image)
    assert sorted(result) == ['predictions', 'visualization']
    assert result['visualization'] is None
    [prediction] = result['predictions']
    assert sorted(prediction) == ['bboxes', 'labels', 'scores']
    assert len(prediction['labels']) == 60  # 10 queries x 6 classes, max_per_img 100
    assert all(isinstance(label, int) for label in prediction['labels'])
    assert len(prediction['bboxes'][0]) == 4
    model = init_detector(tiny_config, weights['pth'])
    expected = inference_detector(model, image).pred_instances
    # an image already decoded (BGR, as cv2 reads it) gives the same detections there too
    from_array = inference_detector(model, cv2.imread(image)).pred_instances
    for key in ('labels', 'scores', 'bboxes'):
        assert torch.equal(torch.tensor(prediction[key]).to(expected[key].dtype),
                           expected[key]), key
        assert torch.equal(from_array[key], expected[key]), key
    # in original-image pixels, best first
    bboxes = np.asarray(prediction['bboxes'])
    assert bboxes[:, 2].max() <= 128 and bboxes[:, 3].max() <= 96
    assert prediction['scores'] == sorted(prediction['scores'], reverse=True)


def test_safetensors_weights_give_the_same_detections(inferencer, tiny_config, weights, images):
    other = DetInferencer(model=tiny_config, weights=weights['safetensors'], device='cpu')
    assert list(other.dataset_meta['classes']) == list(CLASSES)
    image = osp.join(images, 'b.png')
    assert other(image)['predictions'] == inferencer(image)['predictions']


def test_inputs_path_folder_array_and_list(inferencer, images):
    folder = inferencer(images)['predictions']
    assert len(folder) == 3  # a.jpg, b.png, c.png; notes.txt is not an image
    paths = [osp.join(images, n) for n in ('a.jpg', 'b.png', 'c.png')]
    assert inferencer(paths)['predictions'] == folder
    # a decoded BGR array, as cv2 reads it, gives what its file gives
    array = cv2.imread(paths[1])
    assert inferencer(array)['predictions'] == [folder[1]]
    assert inferencer([array, paths[0]])['predictions'] == [folder[1], folder[0]]
    assert len(inferencer([images, array])['predictions']) == 4


def test_a_batch_gives_each_image_its_detections_alone(inferencer, images, monkeypatch):
    paths = [osp.join(images, n) for n in ('a.jpg', 'b.png', 'c.png')]
    alone = [inferencer(path)['predictions'][0] for path in paths]
    sizes = []
    test_step = inferencer.model.test_step
    monkeypatch.setattr(inferencer.model, 'test_step',
                        lambda data: sizes.append(len(data['inputs'])) or test_step(data))
    together = inferencer(paths, batch_size=3)['predictions']
    # a.jpg and c.png share the network-input size and run as one batch; b.png apart
    assert sorted(sizes) == [1, 2]
    for one, batched in zip(alone, together):
        one, batched = as_arrays(one), as_arrays(batched)
        np.testing.assert_array_equal(batched['labels'], one['labels'])
        np.testing.assert_allclose(batched['scores'], one['scores'], rtol=0, atol=1e-6)
        np.testing.assert_allclose(batched['bboxes'], one['bboxes'], rtol=0, atol=1e-4)
    sizes.clear()
    assert len(inferencer(paths, batch_size=2)['predictions']) == 3
    assert sizes == [1, 1, 1]  # [a, b] are two sizes, then c alone


def test_out_dir_pictures_and_json_where_mmdetection_puts_them(inferencer, images, tmp_path):
    out_dir = str(tmp_path / 'out')
    array = make_image(64, 64, seed=5)
    result = inferencer([osp.join(images, 'a.jpg'), array], out_dir=out_dir,
                        no_save_pred=False, return_vis=True, pred_score_thr=0)
    # an array is named by a count of the arrays this inferencer has seen: 00000003.jpg
    vis_array, vis_a = sorted(os.listdir(osp.join(out_dir, 'vis')))
    assert re.fullmatch(r'\d{8}\.jpg', vis_array) and vis_a == 'a.jpg'
    assert sorted(os.listdir(osp.join(out_dir, 'preds'))) == [vis_array[:-4] + '.json',
                                                              'a.json']
    with open(osp.join(out_dir, 'preds', 'a.json')) as f:
        assert json.load(f) == result['predictions'][0]
    # the pictures: RGB, of the original size, with boxes drawn (score >= 0: all of them)
    picture = result['visualization'][0]
    original = cv2.imread(osp.join(images, 'a.jpg'))[..., ::-1]
    assert picture.shape == original.shape
    assert np.abs(picture.astype(int) - original.astype(int)).max() > 50
    # the file is that picture (through the same JPEG encoder)
    jpeg = cv2.imdecode(cv2.imencode('.jpg', np.ascontiguousarray(picture[..., ::-1]))[1],
                        cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.imread(osp.join(out_dir, 'vis', 'a.jpg')), jpeg)
    assert result['visualization'][1].shape == (64, 64, 3)
    # nothing drawn above a threshold of 1
    undrawn = inferencer(osp.join(images, 'b.png'), return_vis=True, pred_score_thr=1.01)
    original = cv2.imread(osp.join(images, 'b.png'))[..., ::-1]
    np.testing.assert_array_equal(undrawn['visualization'][0], original)
    # no_save_vis / no_save_pred (the default) write nothing
    quiet = str(tmp_path / 'quiet')
    inferencer(osp.join(images, 'a.jpg'), out_dir=quiet, no_save_vis=True)
    assert not osp.exists(quiet)


def test_datasamples_and_printed_result(inferencer, images, capsys):
    result = inferencer(osp.join(images, 'a.jpg'), return_datasamples=True, print_result=True)
    sample = result['predictions'][0]
    assert sample.pred_instances.bboxes.shape == (60, 4)
    assert 'predictions' in capsys.readouterr().out


def test_mistakes_name_the_file(inferencer, tiny_config, weights, images, tmp_path):
    missing = str(tmp_path / 'missing.jpg')
    with pytest.raises(ImageLoadError, match=f'image file not found: {missing}'):
        inferencer(missing)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ImageLoadError, match=f'no image files .* in folder {empty}'):
        inferencer(str(empty))
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not a jpeg')
    with pytest.raises(ImageLoadError, match=f'cannot decode image file {broken}'):
        inferencer([osp.join(images, 'a.jpg'), str(broken)])
    with pytest.raises(ImageLoadError, match='must be \\(H, W, 3\\)'):
        inferencer(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(DdetrError, match='batch_size'):
        inferencer(osp.join(images, 'a.jpg'), batch_size=0)
    # skip_unreadable: left out, listed by its place among the inputs
    result = inferencer([str(broken), osp.join(images, 'a.jpg')], skip_unreadable=True)
    assert len(result['predictions']) == 1
    [skipped] = result['skipped']
    assert skipped['index'] == 0 and str(broken) in skipped['error']
    with pytest.raises(CheckpointError, match='does not exist'):
        DetInferencer(model=tiny_config, weights=str(tmp_path / 'none.safetensors'))
    other = tmp_path / 'other.safetensors'  # a checkpoint of another model (8 classes)
    save_safetensors(str(other), init_detector(tiny_config, None, num_classes=8).state_dict())
    with pytest.raises(CheckpointError, match=f'checkpoint {other} does not fit the model'):
        DetInferencer(model=tiny_config, weights=str(other))
