"""Profile training steps of a config with torch.profiler: where a step's time goes.

Builds the config's model, optimizer wrapper (mixed precision included) and training
dataloader as tools/train.py does, loads --warmup + --steps batches first (so data loading
is not in the measurement), runs --warmup steps, times --steps steps without the profiler,
then profiles the same steps and prints one row per kind of op: its own time per step
(children excluded), its share of the profiled step and its calls per step. A step is
``model.train_step(batch, optim_wrapper)``, what mmengine's training loop calls each
iteration (forward, losses, backward, gradient clipping, optimizer step); the loop's hooks
and data loading are left out.

    python tools/analysis/profile_step.py                              # the quick start
    python tools/analysis/profile_step.py CONFIG --steps 5 --rows 30 --trace step.json

--trace writes the profiled steps as a Chrome trace (open it in https://ui.perfetto.dev or
chrome://tracing) to see the ops on a time line.
"""
import argparse
import os.path as osp
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ddetr.cli import add_cfg_options, entry_point
from ddetr.config import load_config
from ddetr.engine import DdetrRunner
from ddetr.engine.cpu_info import cpu_description
from ddetr.setup_env import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', default=QUICKSTART,
                        help='config (default: the quick start)')
    parser.add_argument('--steps', type=int, default=5, help='steps timed and profiled')
    parser.add_argument('--warmup', type=int, default=3, help='steps run first, not counted')
    parser.add_argument('--rows', type=int, default=25, help='kinds of op in the table')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch\'s, all cores)')
    parser.add_argument('--trace', default=None, help='write a Chrome trace to this file')
    add_cfg_options(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rows < 1:
        parser.error('--steps and --rows must be >= 1, --warmup >= 0')
    return args


def build(config, cfg_options, work_dir):
    """(model, optim_wrapper, train dataloader) of the config, as tools/train.py's Runner
    builds them."""
    register_all_modules()
    cfg = load_config(config, cfg_options, work_dir=work_dir)
    cfg.log_level = 'WARNING'  # the Runner's INFO lines (hooks, environment) are not needed
    runner = DdetrRunner.from_cfg(cfg)
    optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    loader = runner.build_dataloader(cfg.train_dataloader)
    return runner.model, optim_wrapper, loader


def op_table(events, steps, total_us):
    """Rows (name, self ms per step, share of the step, calls per step), largest first."""
    rows = [(e.key, e.self_cpu_time_total / 1e3 / steps, e.self_cpu_time_total / total_us,
             e.count / steps) for e in events]
    return sorted(rows, key=lambda row: -row[1])


@entry_point
def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work_dir:
        model, optim_wrapper, loader = build(args.config, args.cfg_options, work_dir)
        batches, loader_iter = [], iter(loader)
        for _ in range(args.warmup + args.steps):
            batches.append(next(loader_iter))
        model.train()

        def run(selected):
            for batch in selected:
                model.train_step(batch, optim_wrapper)

        run(batches[:args.warmup])
        timed = batches[args.warmup:]
        start = time.perf_counter()
        run(timed)
        step_s = (time.perf_counter() - start) / args.steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(timed)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    print(cpu_description())
    print(f'{osp.relpath(args.config, ROOT) if args.config.startswith(ROOT) else args.config}: '
          f'{step_s * 1e3:.1f} ms a training step ({args.steps} steps, batch '
          f'{len(timed[0]["inputs"])}, {torch.get_num_threads()} threads); profiled '
          f'{total_us / 1e3 / args.steps:.1f} ms a step (the profiler adds its own)')
    print('\n| op (self time, children excluded) | ms a step | share | calls a step |')
    print('|---|---:|---:|---:|')
    rows = op_table(events, args.steps, total_us)
    for name, ms, share, calls in rows[:args.rows]:
        print(f'| {name} | {ms:.2f} | {share:.1%} | {calls:g} |')
    rest = rows[args.rows:]
    if rest:
        print(f'| ({len(rest)} other kinds) | {sum(r[1] for r in rest):.2f} | '
              f'{sum(r[2] for r in rest):.1%} | {sum(r[3] for r in rest):g} |')
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f'\nChrome trace of the profiled steps: {args.trace}')
    return 0


if __name__ == '__main__':
    main()
