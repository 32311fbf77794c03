"""Your own COCO data: a ~10-line config trains; class, category and pipeline mistakes
stop before the first iteration; a pipeline without Resize evaluates; check_dataset."""
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
CLASSES = ('boat', 'plane')
SIZES = [(75, 97), (121, 83), (64, 113), (90, 90)]  # (h, w), odd sizes


def write_coco(root, split, sizes, categories=(('boat', 1), ('plane', 2))):
    """Images with one or two filled rectangles, and their COCO file."""
    rng = np.random.default_rng(len(split))
    os.makedirs(osp.join(root, 'images', split), exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    images, annotations = [], []
    for i, (h, w) in enumerate(sizes):
        img = np.full((h, w, 3), 40, np.uint8)
        name = f'{split}_{i}.png'
        for k, (_, cat_id) in enumerate(categories[:1 + i % 2]):
            x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            bw, bh = w // 3, h // 3
            img[y:y + bh, x:x + bw] = 200 if k == 0 else 120
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1,
                                    category_id=cat_id, bbox=[x, y, bw, bh],
                                    area=bw * bh, iscrowd=0))
        cv2.imwrite(osp.join(root, 'images', split, name), img)
        images.append(dict(id=i + 1, file_name=name, height=h, width=w))
    path = osp.join(root, 'annotations', f'{split}.json')
    with open(path, 'w') as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=[dict(id=c, name=n) for n, c in categories]), f)
    return path


# what a user writes (the README's "Your own data" file, with the quick start as parent)
USER_CONFIG = """_base_ = {parent!r}

data_root = {data_root!r}
train_ann_file = 'annotations/train.json'
train_img_dir = 'images/train/'
val_ann_file = 'annotations/val.json'
val_img_dir = 'images/val/'
classes = {classes!r}
"""
# a smaller model and schedule to keep the test fast (not part of the user's file)
FAST = """
model = dict(num_queries=10, encoder=dict(num_layers=1), decoder=dict(num_layers=1))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
train_cfg = dict(max_iters=5, val_interval=5)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=5))
"""


@pytest.fixture
def data_root(tmp_path):
    root = str(tmp_path / 'my_data') + '/'
    write_coco(root, 'train', SIZES)
    write_coco(root, 'val', SIZES[:2])
    return root


def write_config(tmp_path, data_root, classes=CLASSES, extra=''):
    path = tmp_path / 'my_data.py'
    path.write_text(USER_CONFIG.format(parent=QUICKSTART, data_root=data_root,
                                       classes=classes) + FAST + extra)
    return str(path)


def run(args, check=True):
    proc = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-5000:]}')
    return proc


def test_user_config_fills_dataloaders_evaluators_and_head(tmp_path, data_root):
    from ddetr.config import load_config
    config = write_config(tmp_path, data_root)
    for cfg in (load_config(config, work_dir=str(tmp_path / 'w')), load_config(config)):
        for split, ann in (('train', 'train'), ('val', 'val'), ('test', 'val')):
            dataset = cfg[f'{split}_dataloader'].dataset
            assert dataset.type == 'SafeCocoDataset' and 'synthetic' not in dataset
            assert dataset.data_root == data_root
            assert dataset.ann_file == f'annotations/{ann}.json'
            assert dataset.data_prefix == dict(img=f'images/{ann}/')
            assert tuple(dataset.metainfo.classes) == CLASSES
        for split in ('val', 'test'):
            assert cfg[f'{split}_evaluator'].ann_file == data_root + 'annotations/val.json'
        assert cfg.model.bbox_head.num_classes == 2


@pytest.mark.parametrize('extra,message', [
    ("train_img_prefix = 'x/'", 'unknown top-level name `train_img_prefix`'),
    ("val_img_dir = None", '`val_img_dir` is missing'),
    ("metainfo = dict(classes=('a', 'b'))", 'differ'),
    ("classes = 'boat'", 'non-empty list or tuple'),
])
def test_inconsistent_names_are_an_error(tmp_path, data_root, extra, message):
    from ddetr.config import load_config
    config = write_config(tmp_path, data_root, extra=extra)
    with pytest.raises(ValueError, match=message.replace('(', r'\(')):
        load_config(config, work_dir=str(tmp_path / 'w'))


def test_ten_line_config_trains_five_iterations(tmp_path, data_root):
    config = write_config(tmp_path, data_root)
    work_dir = str(tmp_path / 'work')
    proc = run(['tools/train.py', config, '--work-dir', work_dir])
    log = proc.stdout + proc.stderr
    assert 'pre-flight' in log and 'OK' in log
    assert 'Iter(train) [5/5]' in log
    assert 'coco/bbox_mAP' in log
    assert osp.isfile(osp.join(work_dir, 'iter_5.pth'))


MMDET_STYLE = """_base_ = {parent!r}
# the data set in the dataset dicts, mmdet style, and the head left at 1 class
train_dataloader = dict(dataset=dict(
    type='SafeCocoDataset', synthetic=None, data_root={data_root!r},
    ann_file='annotations/train.json', data_prefix=dict(img='images/train/'),
    metainfo=dict(classes={classes!r})))
val_dataloader = dict(dataset=dict(
    type='SafeCocoDataset', synthetic=None, data_root={data_root!r},
    ann_file='annotations/val.json', data_prefix=dict(img='images/val/'),
    metainfo=dict(classes={classes!r})))
test_dataloader = val_dataloader
"""


@pytest.mark.parametrize('case,message', [
    ('classes', 'model.bbox_head.num_classes = 1 but the training dataset'),
    ('unknown', "class names ['ship'] are not categories of the file"),
    ('pipeline', 'test_dataloader.dataset.pipeline'),
])
def test_mistakes_stop_before_the_first_iteration(tmp_path, data_root, case, message):
    if case == 'classes':
        config = str(tmp_path / 'mmdet_style.py')
        open(config, 'w').write(MMDET_STYLE.format(parent=QUICKSTART, data_root=data_root,
                                                   classes=CLASSES) + FAST +
                                 'model.update(bbox_head=dict(num_classes=1))\n')
    elif case == 'unknown':
        config = write_config(tmp_path, data_root, classes=('boat', 'ship'))
    else:  # a test pipeline that loads no image
        config = write_config(tmp_path, data_root, extra=(
            "test_dataloader = dict(dataset=dict(pipeline=[dict(type='PackDetInputs')]))\n"))
    proc = run(['tools/train.py', config, '--work-dir', str(tmp_path / 'work')], check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in log, log[-3000:]
    assert 'Iter(train) [' not in log  # stopped before the first iteration
    assert 'Traceback' not in proc.stderr  # one message, not a stack


def test_pipeline_without_resize_evaluates(tmp_path, data_root):
    # images already at the wanted size: no Resize, so no scale_factor in the meta
    extra = """
test_pipeline = [
    dict(type='LoadImageFromFileSafe'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=1, val_interval=1)
default_hooks = dict(checkpoint=dict(interval=1))
"""
    config = write_config(tmp_path, data_root, extra=extra)
    work_dir = str(tmp_path / 'work')
    run(['tools/train.py', config, '--work-dir', work_dir])
    proc = run(['tools/test.py', config, osp.join(work_dir, 'iter_1.pth'),
                '--work-dir', work_dir])
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr


def check_dataset(args):
    return run(['tools/misc/check_dataset.py'] + args, check=False)


def test_check_dataset_good_folder(tmp_path, data_root):
    ann = osp.join(data_root, 'annotations', 'train.json')
    proc = check_dataset([ann, osp.join(data_root, 'images', 'train'), '--show', '2',
                          '--out', str(tmp_path / 'shown')])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '4 images' in proc.stdout and '6 boxes' in proc.stdout
    lines = proc.stdout.splitlines()
    assert any(line.split() == ['boat', '4'] for line in lines)
    assert any(line.split() == ['plane', '2'] for line in lines)
    assert len(os.listdir(tmp_path / 'shown')) == 2


def test_check_dataset_broken_folder(tmp_path, data_root):
    ann = osp.join(data_root, 'annotations', 'train.json')
    img_dir = osp.join(data_root, 'images', 'train')
    coco = json.load(open(ann))
    os.remove(osp.join(img_dir, 'train_0.png'))
    open(osp.join(img_dir, 'train_1.png'), 'w').write('not an image')
    coco['annotations'][2]['bbox'] = [5, 5, 0, 10]  # empty
    coco['annotations'][3]['bbox'] = [500, 500, 10, 10]  # outside the image
    coco['annotations'][4]['category_id'] = 7  # undeclared
    coco['annotations'][5]['bbox'] = [1, 2, 'x', 4]  # degenerate
    broken = str(tmp_path / 'broken.json')
    json.dump(coco, open(broken, 'w'))
    proc = check_dataset([broken, img_dir])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert 'missing images' in out and 'train_0.png' in out
    assert 'unreadable images' in out and 'train_1.png' in out
    assert 'empty boxes' in out
    assert 'boxes entirely outside the image' in out
    assert 'undeclared category ids' in out and 'category_id 7' in out
    assert 'degenerate boxes' in out
    assert check_dataset([str(tmp_path / 'none.json'), img_dir]).returncode == 2
