"""Train a ddetr detector with mmengine's Runner.

    python tools/train.py configs/ddetr_r50.py
    python tools/train.py CONFIG --work-dir work_dirs/run1 --resume          # latest checkpoint
    python tools/train.py CONFIG --resume work_dirs/run1/iter_500.pth       # a given one
    python tools/train.py CONFIG --amp --cfg-options train_dataloader.batch_size=4
    python tools/train.py CONFIG --seed 1 --deterministic                    # reproducible
    bash tools/dist_train.sh CONFIG 2                                        # DDP, 2 processes

Logs, checkpoints, the dumped config and TensorBoard scalars go to the work dir
(default: work_dirs/<config name>).
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.config import ConfigDict

from ddetr.cli import add_cfg_options, add_trust_checkpoint, apply_trust_checkpoint, entry_point
from ddetr.config import load_config
from ddetr.engine import DdetrRunner, cpu_memory
from ddetr.errors import ConfigError
from ddetr.setup_env import register_all_modules


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a ddetr detector.', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file, e.g. configs/ddetr_r50.py')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CHECKPOINT',
                        help='resume training (model, optimizer, scheduler, iteration) from '
                        'CHECKPOINT, or without a value from the latest checkpoint in the '
                        'work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (float16 with loss scaling on GPU, bfloat16 on '
                        'CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by total batch size / '
                        'auto_scale_lr.base_batch_size')
    parser.add_argument('--seed', type=int, default=None,
                        help='random seed of the run (default: the config\'s randomness.seed)')
    parser.add_argument('--deterministic', action='store_true',
                        help='deterministic algorithms only (torch.use_deterministic_algorithms'
                        ', cudnn.deterministic): the same seed gives the same run, slower on '
                        'GPU; an op without a deterministic path raises')
    add_cfg_options(parser, 'train_cfg.max_epochs=12 model.num_queries=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher for distributed training')
    add_trust_checkpoint(parser)
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args):
    """The config with the command line applied."""
    cfg = load_config(args.config, args.cfg_options, work_dir=args.work_dir,
                      launcher=args.launcher)

    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper in ('AmpOptimWrapper', 'CPUAmpOptimWrapper'):
            pass  # the config already asks for mixed precision
        elif torch.cuda.is_available():
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        else:
            cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ConfigError(f'{args.config}: --auto-scale-lr needs '
                           f'auto_scale_lr=dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True

    if args.seed is not None or args.deterministic:
        randomness = cfg.setdefault('randomness', ConfigDict())
        if args.seed is not None:
            randomness.seed = args.seed
        if args.deterministic:
            randomness.deterministic = True

    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        if not osp.isfile(args.resume):
            raise ConfigError(f'--resume: checkpoint {args.resume} does not exist')
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


@entry_point
def main(argv=None):
    args = parse_args(argv)
    register_all_modules(init_scope=False)
    apply_trust_checkpoint(args)
    cfg = build_config(args)
    cpu_memory.enabled()  # $DDETR_KEEP_FREED_MEMORY, read by the Runner
    DdetrRunner.from_cfg(cfg).train()


if __name__ == '__main__':
    main()
