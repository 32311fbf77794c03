"""The exported model in onnxruntime against ddetr in PyTorch, one image, side by side on CPU.

    python tools/deployment/benchmark_onnx.py                        # Table 1 base, 800x1333
    python tools/deployment/benchmark_onnx.py configs/ddetr_r50.py --dynamic --runs 5
    python tools/deployment/benchmark_onnx.py CONFIG CKPT --onnx model.onnx --shape 800 1216

The model (random weights with checkpoint 'none', drawn with --seed) is exported as
tools/deployment/export_onnx.py exports it (static input --shape, or --dynamic with
img_shape), unless --onnx names a file exported from the same config and checkpoint. One
random image of --shape, already normalized, is run by both: onnxruntime (CPU execution
provider, --threads intra-op threads that sleep rather than spin when idle, its default
graph optimizations) and ddetr's own ``predict`` in PyTorch (--threads threads, the
default ms_deform_attn backend: the compiled op where it is built; channels-last
convolutions; freed memory kept for reuse, as tools/test.py runs it). Times: the median
of --runs runs after one warm-up, the two alternating; how busy other processes kept the
cores (1 s before and after) is printed, since they slow both. The largest differences of
their detections are printed too: the speed of an export that gave other detections would
mean nothing (--box-tol, --score-tol as export_onnx.py's --verify; exit code 1 beyond
them). --profile adds onnxruntime's time per operator type (one more run).
"""
import argparse
import os
import os.path as osp
import statistics
import sys
import tempfile
import time
from typing import Optional

from ddetr.cli import add_cfg_options, add_trust_checkpoint, apply_trust_checkpoint, entry_point
from ddetr.errors import CheckpointError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Time the exported ONNX model in onnxruntime against ddetr in PyTorch '
                    'on one image (CPU).', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', default='configs/ddetr_r50.py',
                        help='config (default configs/ddetr_r50.py, Table 1\'s base model)')
    parser.add_argument('checkpoint', nargs='?', default='none',
                        help="checkpoint (default 'none': random weights)")
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=(800, 1333),
                        help='image height and width (default 800 1333)')
    parser.add_argument('--dynamic', action='store_true',
                        help='export with --dynamic (batch, H, W free; img_shape input)')
    parser.add_argument('--onnx', help='an exported file to time instead of exporting')
    parser.add_argument('--threads', type=int, default=2, help='threads of both (default 2)')
    parser.add_argument('--runs', type=int, default=3, help='timed runs of each (default 3)')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (default 17)')
    parser.add_argument('--box-tol', type=float, default=1e-3,
                        help='largest allowed box difference in px (1e-3)')
    parser.add_argument('--score-tol', type=float, default=1e-4,
                        help='largest allowed score difference (1e-4)')
    parser.add_argument('--seed', type=int, default=0, help="seed of 'none' weights and image")
    parser.add_argument('--profile', action='store_true',
                        help='after the timing, one more onnxruntime run with its profiler: '
                             'the time of each operator type')
    add_cfg_options(parser)
    add_trust_checkpoint(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.threads < 1:
        parser.error('--runs and --threads must be >= 1')
    if args.shape and min(args.shape) < 32:
        parser.error('--shape: H and W must be >= 32')
    return args


def others_busy(seconds: float = 1.0) -> Optional[float]:
    """The share of all cores other processes kept busy over ``seconds`` while this one
    sleeps (from /proc/stat; None where there is none). Other work on the cores slows
    both runs, PyTorch's most: its OpenMP threads wait for each other at every parallel
    region (the quick start at 128x128 with 2 threads on 2 cores kept busy by others:
    0.6-4 s per image, against 0.08 s with 1 thread)."""
    def busy_total():
        with open('/proc/stat') as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle, iowait
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = busy_total()
        time.sleep(seconds)
        busy1, total1 = busy_total()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1)


def busy_line(when: str) -> str:
    share = others_busy()
    if share is None:
        return f'other processes {when}: unknown (no /proc/stat)'
    line = f'other processes {when}: {100 * share:.0f} % of the {os.cpu_count()} cores busy'
    if share > 0.1:
        line += ' (the times are slowed, PyTorch\'s most; measure on an idle machine)'
    return line


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    apply_trust_checkpoint(args)
    import onnxruntime as ort
    import torch

    from ddetr.apis import init_detector
    from ddetr.deployment import check_two_stage_shape, export_onnx
    from ddetr.engine.cpu_info import cpu_description
    from ddetr.engine.cpu_memory import keep_freed_memory
    from ddetr.ops import backend_info

    torch.set_num_threads(args.threads)
    print(cpu_description())
    print(keep_freed_memory())
    print(f'torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime '
          f'{ort.__version__} ({args.threads} intra-op threads); ms_deform_attn in PyTorch: '
          f'{backend_info()}', flush=True)
    if args.onnx and not osp.isfile(args.onnx):
        raise CheckpointError(f'--onnx {args.onnx} does not exist')
    model = init_detector(args.config, args.checkpoint, 'cpu', args.cfg_options,
                          seed=args.seed).float()
    shape = tuple(args.shape)
    check_two_stage_shape(model, shape)
    torch.set_grad_enabled(False)
    gen = torch.Generator().manual_seed(args.seed)
    image = torch.randn(1, 3, *shape, generator=gen)  # normalized, as the preprocessor gives
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = args.onnx
        if not onnx_file:
            onnx_file = osp.join(tmp, 'model.onnx')
            start = time.perf_counter()
            export_onnx(model, onnx_file, shape, args.dynamic, args.opset)
            print(f'exported {args.config} at {shape[0]}x{shape[1]}'
                  f'{" (--dynamic)" if args.dynamic else ""} in '
                  f'{time.perf_counter() - start:.0f} s '
                  f'({osp.getsize(onnx_file) / 2**20:.0f} MiB)', flush=True)
        session = ort.InferenceSession(onnx_file, session_options(args.threads),
                                       providers=['CPUExecutionProvider'])
        ok = time_both(args, shape, session, model, image)
        if args.profile:
            print_profile(onnx_file, args.threads, image, tmp)
    return 0 if ok else 1


def session_options(threads: int, profile_prefix: str = ''):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # idle workers sleep instead of spinning: spinning ones would take the cores from the
    # PyTorch run that follows (quick start, 2 cores: PyTorch 4.6 s instead of 0.6 s)
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def time_both(args, shape, session, model, image) -> bool:
    """Median times, printed side by side with their ratio and the largest differences of
    the detections; True when those are within the tolerances."""
    from ddetr.deployment import compare, onnx_detections, pytorch_detections
    runners = dict(onnxruntime=lambda: onnx_detections(session, image),
                   pytorch=lambda: pytorch_detections(model, image))
    print(busy_line('before the timing'), flush=True)
    times = {name: [] for name in runners}
    outputs = {}
    for run in range(args.runs + 1):  # run 0 warms up
        for name, runner in runners.items():
            start = time.perf_counter()
            outputs[name] = runner()
            if run:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    diff = compare(outputs['pytorch'][0], outputs['onnxruntime'][0], args.score_tol)
    ok = (diff['box_px'] <= args.box_tol and diff['score'] <= args.score_tol
          and diff['label_mismatches'] == 0)
    print(busy_line('after the timing'))
    print(f'{args.config} ({args.checkpoint}), one {shape[0]}x{shape[1]} image, median of '
          f'{args.runs} runs:')
    for name, label in (('onnxruntime', 'onnxruntime'), ('pytorch', 'PyTorch    ')):
        print(f'  {label}  {medians[name]:.2f} s   '
              f'({", ".join(f"{t:.2f}" for t in times[name])})')
    print(f'  onnxruntime / PyTorch = {medians["onnxruntime"] / medians["pytorch"]:.2f}x')
    print(f'  detections: largest box difference {diff["box_px"]:.3g} px, score '
          f'{diff["score"]:.3g}, {diff["label_mismatches"]} label mismatches: '
          f'{"OK" if ok else "FAILED"}', flush=True)
    return ok


def print_profile(onnx_file: str, threads: int, image, tmp: str) -> None:
    """One more onnxruntime run (after a warm-up) with its profiler on: the time of each
    operator type."""
    import collections
    import json

    import onnxruntime as ort

    from ddetr.deployment import onnx_detections
    session = ort.InferenceSession(onnx_file, session_options(threads, osp.join(tmp, 'prof')),
                                   providers=['CPUExecutionProvider'])
    onnx_detections(session, image)  # warm-up
    onnx_detections(session, image)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    # the second run's operators: their kernel times after the warm-up's
    runs = [e for e in events if e.get('cat') == 'Session' and e['name'] == 'model_run']
    after = runs[-1]['ts'] if runs else 0
    by_op = collections.Counter()
    for event in events:
        if (event.get('cat') == 'Node' and event['name'].endswith('_kernel_time')
                and event['ts'] >= after):
            by_op[event['args']['op_name']] += event['dur'] / 1e6
    total = sum(by_op.values())
    print(f'onnxruntime profile, one run ({total:.2f} s in operators):')
    for op, seconds in by_op.most_common(10):
        print(f'  {op:<24} {seconds:6.2f} s  {100 * seconds / total:5.1f} %')


if __name__ == '__main__':
    sys.exit(main())
