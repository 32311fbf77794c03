"""Starting from released weights: fine-tuning a converted MMDetection (80-class)
checkpoint into a 3-class model with `load_from`, and the checkpoints that training,
testing and the demo refuse."""
import os.path as osp

import pytest
import torch

from test_custom_data import QUICKSTART, ROOT, SIZES, run, write_coco, write_config

CATEGORIES = (('boat', 1), ('plane', 2), ('car', 3))
CLASSES = ('boat', 'plane', 'car')
# the source and target models: the quick start's, with refinement and without two-stage
# (mmdet's two-stage needs 256 channels), at the size of test_custom_data's FAST settings
VARIANT = 'model.update(with_box_refine=True, as_two_stage=False)\n'
# one training iteration at learning rate 0: the parameters stay what was loaded
FROZEN = 'optim_wrapper = dict(optimizer=dict(lr=0.0))\n' \
         'train_cfg = dict(max_iters=1, val_interval=1)\n' \
         'default_hooks = dict(checkpoint=dict(interval=1))\n'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('finetune') / 'my_data') + '/'
    write_coco(root, 'train', SIZES, CATEGORIES)
    write_coco(root, 'val', SIZES[:2], CATEGORIES)
    return root


@pytest.fixture(scope='module')
def converted_80(tmp_path_factory, data_root):
    """An 80-class MMDetection checkpoint of the target architecture (mmdet's own model,
    perturbed so that no parameter is at its initial value), converted with
    mmdet2ddetr.py. Returns (path, converted state dict)."""
    from ddetr.config import load_config
    from ddetr.converters.mmdet_equivalent import build_equivalent_pair
    tmp = tmp_path_factory.mktemp('ckpt')
    config = write_config(tmp, data_root, CLASSES, extra=VARIANT)
    model_cfg = load_config(config, num_classes=80).model
    _, mmdet_model = build_equivalent_pair(model_cfg.to_dict(), seed=3, noise=0.05)
    src, dst = str(tmp / 'mmdet_80.pth'), str(tmp / 'ddetr_80.pth')
    torch.save(dict(state_dict=mmdet_model.state_dict(), meta={}), src)
    run([osp.join(ROOT, 'tools', 'model_converters', 'mmdet2ddetr.py'), src, dst])
    return dst, torch.load(dst, weights_only=True)['state_dict']


def test_finetune_from_80_classes_loads_all_but_the_class_layers(tmp_path, data_root,
                                                                  converted_80):
    from ddetr.models.heads.deformable_detr_head import PRIOR_BIAS
    ckpt, source = converted_80
    config = write_config(tmp_path, data_root, CLASSES,
                          extra=VARIANT + FROZEN + f'load_from = {ckpt!r}\n')
    work_dir = str(tmp_path / 'work')
    proc = run([osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', work_dir])
    log = proc.stdout + proc.stderr
    # one short block says what was re-initialized, no mmengine missing-key dump
    from ddetr.apis.inference import build_detector
    from ddetr.config import load_config
    model = build_detector(load_config(config))
    own = model.state_dict()
    class_keys = [k for k in own if k.startswith('bbox_head.cls_branches.')]
    class_layers = sorted({k.rsplit('.', 1)[0] for k in class_keys})
    assert class_layers and len(class_keys) == 2 * len(class_layers)
    assert f'load_from {ckpt}: {len(own) - len(class_keys)} of the model\'s {len(own)} ' \
        in log, log[-3000:]
    assert ('re-initialized (80 classes in the checkpoint, 3 in the model; prior-probability '
            f'bias): {", ".join(class_layers)} (bias, weight)') in log
    assert 'not used from the checkpoint' not in log  # the same architecture: all used
    assert 'do not match exactly' not in log and 'size mismatch' not in log

    from ddetr.engine import load_checkpoint_file
    trained = load_checkpoint_file(osp.join(work_dir, 'iter_1.pth'))['state_dict']
    for key in class_keys:  # 3 classes, freshly initialized
        assert trained[key].shape[0] == 3 and source[key].shape[0] == 80
        if key.endswith('bias'):
            assert torch.allclose(trained[key], torch.full((3, ), PRIOR_BIAS))
    names = {n for n, _ in model.named_parameters()}
    compared = 0
    for key in names:  # every other parameter is the checkpoint's (lr 0)
        if key not in class_keys:
            assert torch.equal(trained[key], source[key]), key
            compared += 1
    assert compared == len(names) - len(class_keys)


def test_finetune_refuses_a_checkpoint_missing_other_layers(tmp_path, data_root, converted_80):
    _, source = converted_80
    broken = {k: v for k, v in source.items() if not k.startswith('decoder.layers.0.')}
    ckpt = str(tmp_path / 'broken.pth')
    torch.save(dict(state_dict=broken, meta={}), ckpt)
    config = write_config(tmp_path, data_root, CLASSES,
                          extra=VARIANT + FROZEN + f'load_from = {ckpt!r}\n')
    proc = run([osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
                str(tmp_path / 'work')], check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert 'would stay unloaded' in err and 'decoder.layers.0.' in err, err[-3000:]
    assert 'my_data.py' in err and 'mmdet2ddetr.py' in err
    assert 'Traceback' not in err
    assert not osp.exists(tmp_path / 'work' / 'iter_1.pth')


def test_finetune_same_classes_loads_everything(data_root, converted_80):
    from ddetr.apis.inference import build_detector
    from ddetr.config import load_config
    from ddetr.engine.state_dict import load_for_finetuning
    ckpt, source = converted_80
    cfg = load_config(QUICKSTART, ['model.encoder.num_layers=1', 'model.decoder.num_layers=1',
                                   'model.num_queries=10', 'model.as_two_stage=False'],
                      num_classes=80)
    model = build_detector(cfg)
    extra = dict(source, **{'extra_layer.weight': torch.ones(2)})
    report = load_for_finetuning(model, extra, ckpt, 'cfg.py')
    assert 're-initialized: nothing' in report
    assert 'not used from the checkpoint (1): extra_layer (weight)' in report
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key


@pytest.mark.parametrize('kind', ['empty', 'other config', 'class layers'])
def test_test_py_refuses_a_checkpoint_that_does_not_fit(tmp_path, data_root, converted_80,
                                                       kind):
    ckpt, source = converted_80
    if kind == 'empty':
        path = str(tmp_path / 'empty.pth')
        torch.save(dict(state_dict={}, meta={}), path)
        extra, expected = VARIANT, 'the checkpoint is empty'
    elif kind == 'other config':  # a two-stage config: most keys still fit, not all
        path, extra, expected = ckpt, '', 'does not fit'
    else:  # the right architecture, 80 classes in a 3-class model
        path, extra, expected = ckpt, VARIANT, 'size mismatch'
    config = write_config(tmp_path, data_root, CLASSES, extra=extra)
    proc = run([osp.join(ROOT, 'tools', 'test.py'), config, path, '--work-dir',
                str(tmp_path / 'work')], check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr and 'my_data.py' in proc.stderr, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    assert not osp.exists(tmp_path / 'work' / 'metrics.json')


def test_test_py_names_a_missing_annotation_file(tmp_path):
    """A config whose data is not there (COCO not downloaded, a typo in data_root) stops
    with one line naming the file, not a traceback."""
    config = write_config(tmp_path, str(tmp_path / 'no_such_data'), CLASSES)
    ckpt = tmp_path / 'never_read.pth'
    ckpt.write_bytes(b'')
    proc = run([osp.join(ROOT, 'tools', 'test.py'), config, str(ckpt), '--work-dir',
                str(tmp_path / 'work')], check=False)
    assert proc.returncode != 0
    assert 'no_such_data' in proc.stderr and 'my_data.py' in proc.stderr, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr


def test_train_py_names_a_missing_annotation_file(tmp_path):
    """The same for training: one line naming the missing file and the config, in seconds
    (the dataset is built before the first iteration)."""
    config = write_config(tmp_path, str(tmp_path / 'no_such_data'), CLASSES)
    proc = run([osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
                str(tmp_path / 'work')], check=False)
    assert proc.returncode != 0
    assert 'no_such_data' in proc.stderr and 'my_data.py' in proc.stderr, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr


def test_demo_refuses_a_mismatched_checkpoint(tmp_path, data_root, converted_80):
    ckpt, _ = converted_80
    config = write_config(tmp_path, data_root, CLASSES)  # two-stage: not the checkpoint's
    image = osp.join(data_root, 'images', 'val', 'val_0.png')
    proc = run([osp.join(ROOT, 'tools', 'demo.py'), image, config, ckpt, '--out',
                str(tmp_path / 'out.jpg')], check=False)
    assert proc.returncode != 0
    assert 'does not fit' in proc.stderr and 'Traceback' not in proc.stderr
    assert not osp.exists(tmp_path / 'out.jpg')


def test_test_py_classwise_prints_and_writes_the_per_class_table(tmp_path, data_root):
    import json

    from ddetr.apis.inference import build_detector
    from ddetr.config import load_config
    config = write_config(tmp_path, data_root, CLASSES)
    ckpt = str(tmp_path / 'own.pth')
    torch.save(dict(state_dict=build_detector(load_config(config)).state_dict(), meta={}), ckpt)
    work_dir = tmp_path / 'work'
    proc = run([osp.join(ROOT, 'tools', 'test.py'), config, ckpt, '--work-dir', str(work_dir),
                '--classwise'])
    assert 'per-class bbox results:' in proc.stdout + proc.stderr
    record = json.loads((work_dir / 'metrics.json').read_text())
    rows = record['classwise']
    assert [r['category'] for r in rows] == list(CLASSES)
    # val has 2 images: the first with a boat, the second with a boat and a plane
    assert [r['num_gts'] for r in rows] == [2, 1, 0]
    assert rows[2]['AP'] is None and all(0 <= rows[i]['AP'] <= 1 for i in range(2))
    assert set(rows[0]) == {'category', 'AP', 'AP50', 'AP75', 'num_gts'}
    assert 'coco/bbox_mAP' in record['metrics']
