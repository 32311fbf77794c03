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
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    from ddetr.utils import add_trust_checkpoint_argument
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
    parser.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE', default=None,
                        help='override config keys, e.g. train_cfg.max_epochs=12 '
                        'model.num_queries=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher for distributed training')
    add_trust_checkpoint_argument(parser)
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args):
    """The config with the command line applied."""
    import torch
    from mmengine.config import ConfigDict

    from ddetr.utils import load_run_config
    cfg = load_run_config(args.config, args.cfg_options, args.work_dir, args.launcher)

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
            raise KeyError(f'{args.config}: --auto-scale-lr needs '
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
            raise FileNotFoundError(f'--resume: checkpoint {args.resume} does not exist')
        cfg.resume, cfg.load_from = True, args.resume

    hooks = cfg.get('custom_hooks', None) or []
    if not any(h.get('type') == 'FiniteLossHook' for h in hooks):
        hooks = list(hooks) + [dict(type='FiniteLossHook')]
    if not any(h.get('type') == 'PreflightHook' for h in hooks):  # checks before iteration 1
        hooks = list(hooks) + [dict(type='PreflightHook')]
    cfg.custom_hooks = list(hooks)
    return cfg


def main(argv=None):
    args = parse_args(argv)

    from ddetr.engine import CheckpointError, DdetrRunner, cpu_memory
    from ddetr.engine.checkpoint import UntrustedCheckpointError
    from ddetr.utils import apply_trust_checkpoint_argument, register_all_modules
    register_all_modules(init_scope=False)
    apply_trust_checkpoint_argument(args)
    try:
        cfg = build_config(args)
        cpu_memory.enabled()  # $DDETR_KEEP_FREED_MEMORY, read by the Runner
    except (FileNotFoundError, KeyError, ValueError) as e:  # a bad command line or config
        sys.exit(f'{osp.basename(__file__)}: error: {e}')
    from ddetr.utils import ConfigError
    try:
        runner = DdetrRunner.from_cfg(cfg)
    except ConfigError as e:  # a misspelt or missing key or type of the config
        sys.exit(f'{osp.basename(__file__)}: error: {e}')
    from ddetr.engine import PreflightError
    try:
        runner.train()
    except PreflightError as e:  # a config/data mistake found before the first iteration
        sys.exit(f'{osp.basename(__file__)}: error (before training): {e}')
    except ConfigError as e:  # a misspelt key or type of what train() builds (optimizer...)
        sys.exit(f'{osp.basename(__file__)}: error: {e}')
    except (UntrustedCheckpointError, CheckpointError) as e:  # load_from / --resume: a file
        sys.exit(f'{osp.basename(__file__)}: stopped: {e}')  # not allow-listed or not fitting
    except FileNotFoundError as e:  # e.g. the annotation file under the config's data_root
        sys.exit(f'{osp.basename(__file__)}: stopped: {e} (check the paths in {args.config})')


if __name__ == '__main__':
    main()
