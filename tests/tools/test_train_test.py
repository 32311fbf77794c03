"""tools/train.py, tools/test.py and tools/dist_train.sh end to end, on a tiny generated
split of the synthetic dataset with a shrunken quick-start model."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
TWELVE = ['mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l', 'AR@1', 'AR@10', 'AR@100',
          'AR_s@100', 'AR_m@100', 'AR_l@100']


def write_config(tmp_path, max_iters=4, checkpoint_interval=2, extra='', generate=True):
    """The quick-start config on 8 + 4 small images with a smaller model. With
    ``generate=False`` the datasets read the folder as it is (no regeneration)."""
    data_root = str(tmp_path / 'data') + '/'
    synthetic = ('dict(num_train=8, num_val=4, seed=1, min_side=96, max_side=128, max_objects=3)'
                 if generate else 'None')
    path = tmp_path / 'tiny.py'
    path.write_text(f"""
_base_ = {QUICKSTART!r}
data_root = {data_root!r}
synthetic = {synthetic}
model = dict(num_queries=10, encoder=dict(num_layers=1), decoder=dict(num_layers=2))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, synthetic=synthetic))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, synthetic=synthetic))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
default_hooks = dict(checkpoint=dict(interval={checkpoint_interval}),
                     logger=dict(interval=1))
{extra}
""")
    return str(path)


def run(args, timeout=300, check=True, **kwargs):
    proc = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS='1'), **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-5000:]}')
    return proc


def trained_iters(log_text):
    """Iteration numbers of the training log lines, e.g. 'Iter(train) [3/6]' -> 3."""
    import re
    return [int(m) for m in re.findall(r'Iter\(train\) \[\s*(\d+)/', log_text)]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('train')
    config = write_config(tmp_path)
    work_dir = str(tmp_path / 'work')
    proc = run(['tools/train.py', config, '--work-dir', work_dir])
    return dict(tmp_path=tmp_path, config=config, work_dir=work_dir, log=proc.stdout + proc.stderr)


def test_quickstart_config_trains_a_few_iterations(trained):
    assert trained_iters(trained['log'])[-1] == 4
    assert osp.isfile(osp.join(trained['work_dir'], 'iter_4.pth'))
    # validation at the end produced the COCO metrics
    assert 'coco/bbox_mAP' in trained['log']
    assert 'loss_cls' in trained['log'] and 'enc_loss_cls' in trained['log']


def test_progressive_resizing_switches_scale_halfway_through(tmp_path):
    """TrainScaleScheduleHook from a config, in mmengine's real loop: the early scale is
    relative to the config's, the switch a fraction of max_iters."""
    hook = ("custom_hooks = [dict(type='TrainScaleScheduleHook', ratios=[0.5], "
            "milestones=[0.5])]")
    config = write_config(tmp_path, extra=hook)
    proc = run(['tools/train.py', config, '--work-dir', str(tmp_path / 'work')])
    log = proc.stdout + proc.stderr
    assert 'training images at scale (128, 128) until iteration 2, then (256, 256)' in log
    assert 'training images at scale (256, 256) from iteration 2' in log
    assert trained_iters(log)[-1] == 4


def test_progressive_resizing_with_loader_workers_stops_in_one_line(tmp_path):
    """The quick start's hook with a loader in worker processes (a user's num_workers=2):
    stopped before the first iteration, naming the key to change, without a traceback."""
    config = write_config(tmp_path)
    proc = run(['tools/train.py', config, '--work-dir', str(tmp_path / 'work'),
                '--cfg-options', 'train_dataloader.num_workers=2'], check=False)
    assert proc.returncode != 0
    assert 'error (before training)' in proc.stderr, proc.stderr[-3000:]
    assert 'set train_dataloader.num_workers=0' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert trained_iters(proc.stdout + proc.stderr) == []


def test_test_tool_reports_the_twelve_coco_metrics(trained, tmp_path):
    out_pkl = str(tmp_path / 'preds.pkl')
    show_dir = 'shown'
    run(['tools/test.py', trained['config'], osp.join(trained['work_dir'], 'iter_4.pth'),
         '--work-dir', str(tmp_path / 'test'), '--out', out_pkl, '--show-dir', show_dir])
    record = json.load(open(tmp_path / 'test' / 'metrics.json'))
    assert sorted(record['metrics']) == sorted(f'coco/bbox_{k}' for k in TWELVE)
    # -1 is pycocotools' value for an area range without objects
    assert all(v == -1 or 0.0 <= v <= 1.0 for v in record['metrics'].values())
    assert osp.getsize(out_pkl) > 0
    shown = [f for _, _, files in os.walk(tmp_path / 'test') for f in files
             if f.endswith(('.jpg', '.png'))]
    assert len(shown) == 4  # every val image drawn


def test_resume_continues_the_iteration_count_after_a_kill(tmp_path):
    config = write_config(tmp_path, max_iters=200, checkpoint_interval=2)
    work_dir = tmp_path / 'work'
    proc = subprocess.Popen([sys.executable, 'tools/train.py', config, '--work-dir',
                             str(work_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        deadline = time.time() + 240
        while not (work_dir / 'iter_4.pth').exists():
            assert proc.poll() is None, 'training exited before its 4th iteration'
            assert time.time() < deadline, 'no checkpoint after 240 s'
            time.sleep(0.5)
        time.sleep(1.0)  # mid-way to the next checkpoint
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = sorted(int(f[5:-4]) for f in os.listdir(work_dir) if f.startswith('iter_'))
    # --resume takes the checkpoint named in last_checkpoint, which is written after a
    # checkpoint is complete: a kill during a save leaves the previous one as the latest.
    latest = osp.basename((work_dir / 'last_checkpoint').read_text().strip())
    last = int(latest[5:-4])
    assert last in saved[-2:] and last < 200
    resumed = run(['tools/train.py', config, '--work-dir', str(work_dir), '--resume',
                   '--cfg-options', f'train_cfg.max_iters={last + 2}'])
    log = resumed.stdout + resumed.stderr
    assert 'resumed' in log.lower()
    assert trained_iters(log) == [last + 1, last + 2]
    assert osp.isfile(work_dir / f'iter_{last + 2}.pth')
    import torch
    ckpt = torch.load(work_dir / f'iter_{last + 2}.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == last + 2
    assert ckpt['optimizer']['state']  # the optimizer state came along


def test_resume_from_one_group_per_parameter_stops_with_what_to_do(tmp_path):
    """A checkpoint whose optimizer has one group per parameter (mmengine's default
    constructor, ddetr before GroupedOptimWrapperConstructor) does not resume into the
    grouped optimizer: one line saying why and what to do instead, no traceback."""
    import torch
    config = write_config(tmp_path, max_iters=2, checkpoint_interval=2)
    work_dir = tmp_path / 'work'
    run(['tools/train.py', config, '--work-dir', str(work_dir)])
    ckpt = torch.load(work_dir / 'iter_2.pth', map_location='cpu', weights_only=False)
    groups = ckpt['optimizer']['param_groups']
    assert len(groups) == 2  # lr and lr x 0.1
    ckpt['optimizer']['param_groups'] = [dict(g, params=[i]) for g in groups for i in g['params']]
    old = tmp_path / 'per_parameter.pth'
    torch.save(ckpt, old)
    proc = run(['tools/train.py', config, '--work-dir', str(tmp_path / 'work2'), '--resume',
                str(old), '--cfg-options', 'train_cfg.max_iters=4'], check=False)
    err = proc.stderr
    assert proc.returncode != 0
    assert 'Traceback' not in err
    assert 'one group per parameter' in err and f'load_from={old}' in err


def test_two_process_torchrun_training_on_cpu(tmp_path):
    config = write_config(tmp_path, max_iters=2, checkpoint_interval=2)
    work_dir = str(tmp_path / 'work')
    proc = subprocess.run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', work_dir],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1', PORT='29517',
                                   PYTHON=sys.executable))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # processes: 2
    assert trained_iters(log)[-1] == 2
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))


def test_non_finite_loss_stops_training_with_iteration_and_terms(tmp_path):
    # An absurd learning rate blows the weights up within a few iterations.
    config = write_config(tmp_path, max_iters=50, extra="""
optim_wrapper = dict(optimizer=dict(lr=1e30), clip_grad=None)
param_scheduler = []
""")
    proc = run(['tools/train.py', config, '--work-dir', str(tmp_path / 'work')], check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'FloatingPointError: non-finite loss at iteration' in log
    assert 'loss_cls=' in log and 'loss_bbox=' in log


def test_missing_image_is_skipped_in_training_and_stops_testing(trained, tmp_path):
    import shutil
    data = tmp_path / 'data'
    shutil.copytree(trained['tmp_path'] / 'data', data)
    # 4 iterations of 2 = one pass over the 8 images: the missing one is always drawn
    config = write_config(tmp_path, max_iters=4, generate=False)  # keep the damage
    victim_train = sorted(os.listdir(data / 'train'))[0]
    victim_val = sorted(os.listdir(data / 'val'))[0]
    (data / 'train' / victim_train).unlink()
    (data / 'val' / victim_val).write_bytes(b'not an image')
    proc = run(['tools/train.py', config, '--work-dir', str(tmp_path / 'work'),
                '--cfg-options', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None'])
    log = proc.stdout + proc.stderr
    assert victim_train in log and trained_iters(log)[-1] == 4
    proc = run(['tools/test.py', config, osp.join(trained['work_dir'], 'iter_4.pth'),
                '--work-dir', str(tmp_path / 'test')], check=False)
    assert proc.returncode != 0
    assert victim_val in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_quickstart_flow_trains_evaluates_and_draws(tmp_path):
    """tools/quickstart.py (the README's main command after setup) end to end on the tiny
    config: training, the 12 metrics from tools/test.py, the ground truth vs prediction
    picture, and the summary table."""
    config = write_config(tmp_path, max_iters=2)
    work_dir = tmp_path / 'qs'
    proc = run(['tools/quickstart.py', '--config', config, '--work-dir', str(work_dir),
                '--num-images', '3'])
    assert 'quick start done' in proc.stdout
    assert '| AP | AP50 | AP75 | APs | APm | APl | AR1 | AR10 | AR100 | ARs | ARm | ARl |' \
        in proc.stdout
    record = json.load(open(work_dir / 'metrics.json'))
    assert sorted(record['metrics']) == sorted(f'coco/bbox_{k}' for k in TWELVE)
    import cv2
    picture = cv2.imread(str(work_dir / 'val_predictions.png'))
    assert picture is not None and picture.shape[0] > 96 and picture.shape[1] > 2 * 96


def logged_losses(work_dir):
    """The training losses of every iteration, from the run's scalars.json."""
    [scalars] = [osp.join(d, f) for d, _, files in os.walk(work_dir) for f in files
                 if f == 'scalars.json']
    return [json.loads(line)['loss'] for line in open(scalars) if '"loss"' in line]


def test_same_seed_gives_identical_losses_and_another_seed_does_not(tmp_path):
    config = write_config(tmp_path, max_iters=20, checkpoint_interval=20)
    runs = {}
    for name, seed, iters in (('a', 7, 20), ('b', 7, 20), ('c', 8, 3)):
        work_dir = tmp_path / name
        run(['tools/train.py', config, '--work-dir', str(work_dir), '--seed', str(seed),
             '--deterministic', '--cfg-options', f'train_cfg.max_iters={iters}',
             f'train_cfg.val_interval={iters}'])
        runs[name] = logged_losses(work_dir)
    assert len(runs['a']) == 20
    assert runs['a'] == runs['b']  # bit for bit
    assert runs['c'] != runs['a'][:3]
