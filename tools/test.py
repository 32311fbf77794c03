"""Evaluate a ddetr checkpoint: the 12 COCO bbox metrics (pycocotools) on the config's
test set.

    python tools/test.py configs/ddetr_r50.py work_dirs/ddetr_r50/epoch_50.pth
    python tools/test.py CONFIG CKPT --out results.pkl       # raw predictions
    python tools/test.py CONFIG CKPT --show-dir pictures     # predictions drawn on images
    python tools/test.py CONFIG CKPT --tta                   # flip + multi-scale testing
    python tools/test.py CONFIG CKPT --classwise             # + AP, AP50, AP75, GTs per class

The checkpoint must fit the config's model: one that would leave most of it unloaded
(another config, a release never converted, an empty file) or misses any parameter is
refused, naming the config and the converters.

The metrics are also written to <work_dir>/metrics.json (and --out-metrics FILE), the
file tools/sweep.py collects.
"""
import argparse
import json
import os
import os.path as osp

from mmengine.config import ConfigDict
from mmengine.dist import is_main_process

from ddetr.cli import add_cfg_options, add_trust_checkpoint, apply_trust_checkpoint, entry_point
from ddetr.config import load_config
from ddetr.engine import DdetrRunner, cpu_memory
from ddetr.errors import CheckpointError, ConfigError
from ddetr.setup_env import register_all_modules


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Evaluate a ddetr checkpoint (COCO bbox metrics).', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and metrics.json go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--out', help='dump the raw predictions to this .pkl file')
    parser.add_argument('--out-metrics', help='also write the metrics to this JSON file')
    parser.add_argument('--show-dir', help='draw predictions (and ground truth) on the test '
                        'images into this folder (relative to the work dir\'s run folder)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='score threshold of the boxes drawn with --show-dir')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (the config\'s tta_model and '
                        'tta_pipeline: flip + multi-scale)')
    parser.add_argument('--classwise', action='store_true',
                        help='also a per-class table (AP, AP50, AP75, ground-truth '
                        'instances), printed and written to metrics.json under "classwise"')
    add_cfg_options(parser, 'test_dataloader.batch_size=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher for distributed testing')
    add_trust_checkpoint(parser)
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args):
    if not osp.isfile(args.checkpoint):
        raise CheckpointError(f'checkpoint {args.checkpoint} does not exist')
    cfg = load_config(args.config, args.cfg_options, work_dir=args.work_dir,
                      launcher=args.launcher)
    cfg.load_from = args.checkpoint
    cfg.resume = False

    if args.show_dir:
        hooks = cfg.setdefault('default_hooks', ConfigDict())
        vis = hooks.get('visualization', ConfigDict(type='DetVisualizationHook'))
        vis.update(draw=True, test_out_dir=args.show_dir, score_thr=args.score_thr)
        hooks['visualization'] = vis
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ConfigError(f'--out {args.out}: the file must end in .pkl')
        cfg.test_evaluator = _as_list(cfg.test_evaluator) + [
            dict(type='DumpDetResults', out_file_path=args.out)]
    if args.classwise:
        for evaluator in _as_list(cfg.test_evaluator):
            if 'Coco' in str(evaluator.get('type', '')):
                evaluator['classwise'] = True
    if args.tta:
        for key in ('tta_model', 'tta_pipeline'):
            if key not in cfg:
                raise ConfigError(f'{args.config}: --tta needs `{key}` in the config '
                               f'(see configs/table3/*_tta.py)')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    return cfg


def _as_list(evaluators):
    return list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]


def classwise_results(runner):
    """The per-class rows of the test evaluator's metrics (``Coco12Metric(classwise=True)``),
    ``None`` when none computed them."""
    for metric in runner.test_evaluator.metrics:
        rows = getattr(metric, 'classwise_results', None)
        if rows is not None:
            return rows
    return None


@entry_point
def main(argv=None):
    args = parse_args(argv)
    register_all_modules(init_scope=False)
    apply_trust_checkpoint(args)
    cfg = build_config(args)
    cpu_memory.enabled()  # $DDETR_KEEP_FREED_MEMORY, read by the Runner
    runner = DdetrRunner.from_cfg(cfg)
    metrics = runner.test()
    if is_main_process():
        metrics = {k: float(v) if isinstance(v, (int, float)) else v for k, v in metrics.items()}
        targets = [osp.join(cfg.work_dir, 'metrics.json')] + (
            [args.out_metrics] if args.out_metrics else [])
        record = dict(config=osp.abspath(args.config), checkpoint=osp.abspath(args.checkpoint),
                      metrics=metrics)
        if args.classwise:
            record['classwise'] = classwise_results(runner)
        for path in targets:
            os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
            with open(path, 'w') as f:
                json.dump(record, f, indent=2)
        print(f'metrics written to {", ".join(targets)}')
    return metrics


if __name__ == '__main__':
    main()
