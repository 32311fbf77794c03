"""Python parts of tools/check_gpu.sh: arguments, whether a GPU is there (and its arch),
the workload compute-sanitizer checks, and the one summary. CPU-testable
(tests/tools/test_check_gpu.py).

    python tools/check_gpu.py arch        # TORCH_CUDA_ARCH_LIST, e.g. 9.0; exit 2 without a GPU
    python tools/check_gpu.py workload    # the op forward+backward on edge cases (for memcheck)
    python tools/check_gpu.py summary LOG...   # one summary from the steps' logs
"""
import argparse
import re
import sys
from typing import TYPE_CHECKING, Callable, Optional, Tuple

if TYPE_CHECKING:
    import torch


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


def edge_locations(width: int, gen) -> 'torch.Tensor':
    """Normalized x coordinates that put bilinear corners on and past a map's borders: pixel
    centres, the exact borders 0 and 1, half and whole pixels outside, and random ones."""
    import torch
    special = [0.0, 1.0, 0.5 / width, 1 - 0.5 / width, -0.5 / width, 1 + 0.5 / width,
               -1.0 / width, 1 + 1.0 / width, -2.0, 3.0]
    return torch.cat([torch.tensor(special, dtype=torch.float64),
                      torch.rand(22, generator=gen, dtype=torch.float64) * 1.6 - 0.3])


def memcheck_workload(device: str = 'cuda') -> int:
    """The compiled op's forward and backward on border-touching locations, for every dtype
    and both backward paths (head_dims a multiple of 32 or not); returns the calls made.
    compute-sanitizer runs this to find out-of-bounds reads and writes in the kernels."""
    import torch

    from ddetr.ops import ms_deform_attn, msda_backend
    gen = torch.Generator().manual_seed(0)
    shapes = torch.tensor([(13, 7), (5, 9), (1, 1), (3, 2)], dtype=torch.int64)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    bs, num_heads, num_levels, num_points = 2, 3, len(shapes), 4
    calls = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for head_dims in (32, 5):
            x, y = edge_locations(7, gen), edge_locations(13, gen)
            num_queries = x.numel()
            loc = torch.stack([x, y.roll(3)], -1).view(1, num_queries, 1, 1, 1, 2).expand(
                bs, num_queries, num_heads, num_levels, num_points, 2)
            loc = loc + torch.rand(loc.shape, generator=gen, dtype=torch.float64) * 1e-3 * (
                torch.arange(num_points) > 0).view(1, 1, 1, 1, num_points, 1)
            attn = torch.rand(bs, num_queries, num_heads, num_levels, num_points, generator=gen,
                              dtype=torch.float64)
            value = torch.randn(bs, int(sizes.sum()), num_heads, head_dims, generator=gen,
                                dtype=torch.float64)
            leaves = [t.to(device, dtype).requires_grad_(True) for t in (value, loc, attn)]
            with msda_backend('compiled'):
                out = ms_deform_attn(leaves[0], shapes.to(device), starts.to(device), leaves[1],
                                     leaves[2])
            out.backward(torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out))
            calls += 1
    if device == 'cuda':
        torch.cuda.synchronize()
    return calls


def memcheck_result(rc: Optional[int], log: str) -> Tuple[str, bool]:
    """(line, ok) for the summary, from compute-sanitizer's exit status and output. rc None:
    no compute-sanitizer on this machine (reported, not a failure)."""
    if rc is None:
        return 'not run (no compute-sanitizer)', True
    found = re.findall(r'ERROR SUMMARY: (\d+) error', log)
    if rc == 0 and found and int(found[-1]) == 0 and 'workload:' in log:
        return 'ok (0 errors)', True
    if found and int(found[-1]) > 0:
        return f'{found[-1]} errors (see memcheck.log)', False
    return f'did not complete (rc {rc}; see memcheck.log)', False


def summary(build_rc: int, tests_log: str, bench_log: str, arch: str,
            memcheck_rc: Optional[int] = None, memcheck_log: str = '') -> Tuple[str, bool]:
    """(text, ok): one block saying what passed, for the closing note."""
    counts = parse_pytest(tests_log)
    tests_ok = bool(counts.get('passed')) and not counts.get('failed') and not counts.get('error')
    bench_ok = '| ' in bench_log and 'Traceback' not in bench_log
    memcheck_line, memcheck_ok = memcheck_result(memcheck_rc, memcheck_log)
    ok = build_rc == 0 and tests_ok and bench_ok and memcheck_ok
    lines = [f'check_gpu: {"OK" if ok else "FAILED"} (arch {arch})',
             f'  build:     {"ok" if build_rc == 0 else f"failed (rc {build_rc})"}',
             '  tests:     ' + (', '.join(f'{n} {w}' for w, n in counts.items()) or 'no result'),
             f'  memcheck:  {memcheck_line}',
             f'  benchmark: {"ok" if bench_ok else "failed"}']
    lines += ['    ' + line for line in bench_log.splitlines() if line.startswith('| ')]
    return '\n'.join(lines), ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='cmd', required=True)
    sub.add_parser('arch', help="print the local GPU's arch; exit 2 without a GPU")
    w = sub.add_parser('workload', help='run the op on border cases (what memcheck checks)')
    w.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    s = sub.add_parser('summary', help='print one summary of the build, tests and benchmark')
    s.add_argument('--build-rc', type=int, required=True)
    s.add_argument('--arch', required=True)
    s.add_argument('--memcheck-rc', type=int, default=None,
                   help="compute-sanitizer's exit status (omit: it was not run)")
    s.add_argument('--memcheck-log', default=None, help="compute-sanitizer's output")
    s.add_argument('tests_log')
    s.add_argument('bench_log')
    args = parser.parse_args(argv)
    no_gpu = ('check_gpu: no CUDA GPU visible (torch.cuda.is_available() is False); '
              'nothing to check')
    if args.cmd == 'arch':
        arch = cuda_arch()
        if arch is None:
            print(no_gpu, file=sys.stderr)
            return 2
        print(arch)
        return 0
    if args.cmd == 'workload':
        if args.device == 'cuda' and cuda_arch() is None:
            print(no_gpu + ' (workload --device cpu runs it on the CPU)', file=sys.stderr)
            return 2
        print(f'workload: {memcheck_workload(args.device)} forward+backward calls done')
        return 0
    read = lambda path: open(path, errors='replace').read()  # noqa: E731
    text, ok = summary(args.build_rc, read(args.tests_log), read(args.bench_log), args.arch,
                       args.memcheck_rc, read(args.memcheck_log) if args.memcheck_log else '')
    print(text)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
