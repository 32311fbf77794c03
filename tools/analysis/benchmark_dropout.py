"""Benchmark ddetr's dropout (``ddetr.ops.Dropout``, a counter-based mask computed in one
pass) against torch's ``nn.Dropout`` on the CPU, side by side in one run.

The tensors are those of the paper's encoder on one 800x1333 image (22,223 tokens): the
FFN's hidden activations (1024 channels, the largest dropout of the model) and a layer's
output (256 channels). Each measurement is forward + backward of ``dropout(x)`` with
p = 0.1, the median of --repeat runs, the two implementations alternating.

    python tools/analysis/benchmark_dropout.py [--repeat 7] [--threads 2] [--dtypes ...]
"""
import argparse
import statistics
import sys
import time

import torch

TOKENS = 22_223  # the encoder's queries on an 800x1333 image (maps 100x167 ... 13x21)
CHANNELS = {'FFN hidden': 1024, 'layer output': 256}


def forward_backward(dropout, x, grad):
    x.grad = None
    dropout(x).backward(grad)


def measure(shape, dtype, repeat):
    """Median forward+backward ms of (torch, ddetr), runs alternating."""
    from ddetr.models.fast_paths import Dropout
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape, dtype=dtype)
    impls = {'torch': torch.nn.Dropout(0.1), 'ddetr': Dropout(0.1)}
    times = {name: [] for name in impls}
    for run in range(repeat + 1):
        for name, dropout in impls.items():
            start = time.perf_counter()
            forward_backward(dropout, x, grad)
            if run:  # the first round warms up
                times[name].append((time.perf_counter() - start) * 1e3)
    return statistics.median(times['torch']), statistics.median(times['ddetr'])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeat', type=int, default=7, help='timed runs per measurement')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='torch threads (default: all cores)')
    parser.add_argument('--dtypes', nargs='+', default=['float32'],
                        choices=['float32', 'bfloat16'], help='input dtypes')
    parser.add_argument('--scale', type=float, default=1.0,
                        help='fraction of the tokens to use (smaller: a quicker check)')
    args = parser.parse_args(argv)
    from ddetr.engine.cpu_memory import keep_freed_memory
    from ddetr.ops import HAS_COUNTER_DROPOUT
    if not HAS_COUNTER_DROPOUT:
        print('benchmark_dropout: ddetr._C is not built, so ddetr.ops.Dropout is '
              'nn.Dropout; build it with `python setup.py build_ext --inplace`',
              file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    print(keep_freed_memory() + ' (both implementations)')
    print(f'{args.threads} threads, p = 0.1, forward + backward, median of {args.repeat}\n')
    print('| tensor | dtype | nn.Dropout (ms) | ddetr Dropout (ms) | ratio |')
    print('|---|---|---:|---:|---:|')
    tokens = max(1, round(TOKENS * args.scale))
    for name, channels in CHANNELS.items():
        label, shape = f'{name} ({tokens} x {channels})', (1, tokens, channels)
        for dtype in args.dtypes:
            torch_ms, ddetr_ms = measure(shape, getattr(torch, dtype), args.repeat)
            print(f'| {label} | {dtype} | {torch_ms:.1f} | {ddetr_ms:.1f} | '
                  f'{torch_ms / ddetr_ms:.2f}x |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
