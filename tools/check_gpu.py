"""Python parts of tools/check_gpu.sh: arguments, whether a GPU is there (and its arch),
and the one summary. CPU-testable (tests/tools/test_check_gpu.py).

    python tools/check_gpu.py arch            # prints TORCH_CUDA_ARCH_LIST, e.g. 9.0; exit 2 if no GPU
    python tools/check_gpu.py summary LOG...  # one summary from the steps' logs
"""
import argparse
import re
import sys
from typing import Callable, Optional, Tuple


def cuda_arch(capability: Optional[Callable[[], Tuple[int, int]]] = None,
              available: Optional[Callable[[], bool]] = None) -> Optional[str]:
    """The local GPU's TORCH_CUDA_ARCH_LIST entry (e.g. '9.0'), or None without a GPU."""
    import torch
    available = available or torch.cuda.is_available
    if not available():
        return None
    major, minor = (capability or torch.cuda.get_device_capability)()
    return f'{major}.{minor}'


def parse_pytest(text: str) -> dict:
    """Counts from pytest's last summary line ('3 passed, 1 skipped in 2.0s')."""
    counts = {}
    for number, word in re.findall(r'(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)',
                                   text):
        counts[word.rstrip('s') if word.startswith('error') else word] = int(number)
    return counts


def summary(build_rc: int, tests_log: str, bench_log: str, arch: str) -> Tuple[str, bool]:
    """(text, ok): one block saying what passed, for the closing note."""
    counts = parse_pytest(tests_log)
    tests_ok = bool(counts.get('passed')) and not counts.get('failed') and not counts.get('error')
    bench_ok = '| ' in bench_log and 'Traceback' not in bench_log
    ok = build_rc == 0 and tests_ok and bench_ok
    lines = [f'check_gpu: {"OK" if ok else "FAILED"} (arch {arch})',
             f'  build:     {"ok" if build_rc == 0 else f"failed (rc {build_rc})"}',
             '  tests:     ' + (', '.join(f'{n} {w}' for w, n in counts.items()) or 'no result'),
             f'  benchmark: {"ok" if bench_ok else "failed"}']
    lines += ['    ' + line for line in bench_log.splitlines() if line.startswith('| ')]
    return '\n'.join(lines), ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='cmd', required=True)
    sub.add_parser('arch', help="print the local GPU's arch; exit 2 without a GPU")
    s = sub.add_parser('summary', help='print one summary of the build, tests and benchmark')
    s.add_argument('--build-rc', type=int, required=True)
    s.add_argument('--arch', required=True)
    s.add_argument('tests_log')
    s.add_argument('bench_log')
    args = parser.parse_args(argv)
    if args.cmd == 'arch':
        arch = cuda_arch()
        if arch is None:
            print('check_gpu: no CUDA GPU visible (torch.cuda.is_available() is False); '
                  'nothing to check', file=sys.stderr)
            return 2
        print(arch)
        return 0
    read = lambda path: open(path, errors='replace').read()  # noqa: E731
    text, ok = summary(args.build_rc, read(args.tests_log), read(args.bench_log), args.arch)
    print(text)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
