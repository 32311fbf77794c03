"""The quick start, end to end on the built-in default (no downloads): generate the
synthetic shapes dataset, train the scaled-down two-stage Deformable DETR with iterative
box refinement from scratch, evaluate the 12 COCO metrics with tools/test.py, and draw
ground truth vs predictions on a few val images.

    python tools/quickstart.py                      # ~10-15 min on 2 CPU cores
    python tools/quickstart.py --work-dir work_dirs/qs --cfg-options train_cfg.max_iters=300

Each step is the project's own tool (tools/train.py, tools/test.py,
tools/analysis/show_predictions.py) run as a subprocess, so its log shows what a
researcher would type.
"""
import argparse
import json
import os.path as osp
import shlex
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join('configs', 'quickstart', 'ddetr_tiny_synthetic.py')
METRIC_NAMES = [('mAP', 'AP'), ('mAP_50', 'AP50'), ('mAP_75', 'AP75'), ('mAP_s', 'APs'),
                ('mAP_m', 'APm'), ('mAP_l', 'APl'), ('AR@1', 'AR1'), ('AR@10', 'AR10'),
                ('AR@100', 'AR100'), ('AR_s@100', 'ARs'), ('AR_m@100', 'ARm'),
                ('AR_l@100', 'ARl')]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate data, train, evaluate and draw: the ddetr quick start.',
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=CONFIG, help=f'config (default: {CONFIG})')
    parser.add_argument('--work-dir', default=osp.join('work_dirs', 'quickstart'),
                        help='where checkpoints, logs, metrics and the picture go')
    parser.add_argument('--num-images', type=int, default=8,
                        help='val images in the ground truth vs prediction picture')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='passed to tools/train.py and tools/test.py')
    return parser.parse_args(argv)


def step(title, args):
    """Run one tool, echoing its command line; stop the quick start if it fails."""
    print(f'\n=== {title}\n$ python {shlex.join(args)}', flush=True)
    start = time.time()
    proc = subprocess.run([sys.executable] + args, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f'quickstart: "{title}" failed (exit code {proc.returncode}); see above')
    return time.time() - start


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    options = ['--cfg-options'] + args.cfg_options if args.cfg_options else []
    # the tools run from the repository root (the config's data_root is relative to it)
    work_dir, config = osp.abspath(args.work_dir), osp.abspath(args.config)
    train_time = step('train (the dataset is generated on first use)',
                      ['tools/train.py', config, '--work-dir', work_dir] + options)
    last = osp.join(ROOT, open(osp.join(work_dir, 'last_checkpoint')).read().strip())
    metrics_file = osp.join(work_dir, 'metrics.json')
    step('evaluate: the 12 COCO bbox metrics (pycocotools)',
         ['tools/test.py', config, last, '--work-dir', work_dir,
          '--out-metrics', metrics_file] + options)
    picture = osp.join(work_dir, 'val_predictions.png')
    step('draw ground truth vs predictions',
         ['tools/analysis/show_predictions.py', config, last, '--out', picture,
          '--num-images', str(args.num_images)])

    metrics = json.load(open(metrics_file))['metrics']
    print('\n=== quick start done in {:.1f} min (training {:.1f} min)'.format(
        (time.time() - start) / 60, train_time / 60))
    print('| ' + ' | '.join(short for _, short in METRIC_NAMES) + ' |')
    print('|' + '---:|' * len(METRIC_NAMES))
    print('| ' + ' | '.join(f'{metrics.get("coco/bbox_" + key, float("nan")):.3f}'
                            for key, _ in METRIC_NAMES) + ' |')
    print(f'checkpoint: {last}\nmetrics:    {metrics_file}\npicture:    {picture}')


if __name__ == '__main__':
    main()
