"""Benchmark ddetr's compiled ms_deform_attn against the grid_sample fallback that MMCV,
detrex and HuggingFace run on CPU, side by side in one run on this machine.

Two workloads of the paper's model on an 800x1333 image (maps 100x167, 50x84, 25x42,
13x21; 8 heads x 32 channels; 4 levels x 4 points):
  encoder  bs 1, every pixel a query (22,223 queries), points clustered around the query
  decoder  bs 2, 300 object queries spread over the image

Prints times (median of at least --repeat runs; short ones are repeated to fill 0.5 s) and
peak memory of forward+backward, each measured in a fresh process, and the ratios
fallback / ddetr with the project's targets.

Each time is also shown as a multiple of this machine's floor for it: the bytes the op
must move at least (forward: value, sampling locations, attention weights and output once;
backward: those inputs, the output gradient and the three input gradients once) divided by
the memory bandwidth of a plain `copy_` of a tensor of the value's size, measured in the
same run with the same threads ("x floor" 1.0 = as fast as copying its data). --dtypes
adds ddetr's times for bfloat16/float16 inputs beside float32 (they move half the bytes).

    python tools/analysis/benchmark_op.py [--repeat 5] [--threads 2] [--json out.json]
    python tools/analysis/benchmark_op.py --dtypes float32 bfloat16 float16
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from ddetr.engine.cpu_info import cpu_description
from ddetr.engine.cpu_memory import keep_freed_memory, process_status_kb
from ddetr.ops import HAS_COMPILED_OP, backend_info, ms_deform_attn

SPATIAL_SHAPES = [(100, 167), (50, 84), (25, 42), (13, 21)]
NUM_HEADS, HEAD_DIMS, NUM_POINTS = 8, 32, 4
WORKLOADS = {'encoder': dict(bs=1, num_queries=None), 'decoder': dict(bs=2, num_queries=300)}
# Targets of the performance issue, as (metric, minimum ratio fallback / ddetr).
TARGETS = {('encoder', 'forward'): 25.0, ('encoder', 'forward+backward'): 15.0,
           ('decoder', 'forward'): 30.0, ('decoder', 'forward+backward'): 15.0}
MEMORY_TARGET = 1 / 0.3  # ddetr's fwd+bwd peak memory <= 0.3x the fallback's


def fallback_grid_sample(value, spatial_shapes, level_start_index, sampling_locations,
                         attention_weights):
    """The pure-PyTorch implementation the other projects run on CPU, reimplemented with
    their structure: split value per level, one grid_sample per level, stack all samples,
    weight and sum."""
    bs, _, num_heads, head_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes]
    value_list = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        # (bs, H*W, M, D) -> (bs*M, D, H, W)
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(
            bs * num_heads, head_dims, height, width)
        # (bs, nq, M, K, 2) -> (bs*M, nq, K, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(value_l, grid_l, mode='bilinear', padding_mode='zeros',
                                     align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries,
                                                        num_levels * num_points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(bs, num_heads * head_dims, num_queries).transpose(1, 2).contiguous()


def make_inputs(workload, seed=0):
    """Inputs shaped like the paper's model at an 800x1333 image; sampling points are
    clustered around each query's reference point as in a trained model (offsets of a few
    pixels per level, A.4-style directions scaled by the point index plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(SPATIAL_SHAPES, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_keys = int(sizes.sum())
    bs = WORKLOADS[workload]['bs']
    num_queries = WORKLOADS[workload]['num_queries'] or num_keys
    num_levels = len(SPATIAL_SHAPES)
    value = torch.randn(bs, num_keys, NUM_HEADS, HEAD_DIMS, generator=gen)
    if workload == 'encoder':
        # every pixel of every level, in raster order, at its centre
        refs = []
        for h, w in SPATIAL_SHAPES:
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                    indexing='ij')
            refs.append(torch.stack([xs, ys], -1).reshape(-1, 2))
        ref = torch.cat(refs)[None].expand(bs, -1, -1)
    else:
        ref = torch.rand(bs, num_queries, 2, generator=gen)
    normalizer = spatial_shapes.flip(-1).float()  # (L, 2) as (W, H)
    angle = torch.arange(NUM_HEADS) * (2 * torch.pi / NUM_HEADS)
    direction = torch.stack([angle.cos(), angle.sin()], -1)  # (M, 2)
    scale = torch.arange(1, NUM_POINTS + 1).float()  # (K,)
    offsets = direction[:, None, None, :] * scale[None, None, :, None]  # (M, 1, K, 2)
    offsets = offsets + torch.randn(bs, num_queries, NUM_HEADS, num_levels, NUM_POINTS, 2,
                                    generator=gen)
    locations = ref[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
    weights = torch.randn(bs, num_queries, NUM_HEADS, num_levels * NUM_POINTS, generator=gen)
    weights = weights.softmax(-1).view(bs, num_queries, NUM_HEADS, num_levels, NUM_POINTS)
    return value, spatial_shapes, level_start_index, locations.contiguous(), weights


def bytes_moved(inputs, backward: bool) -> int:
    """The least bytes one call must read and write: every input and the output once; for
    forward+backward also the output gradient and the gradients of value, sampling
    locations and attention weights (the integer shape tensors are negligible)."""
    value, _, _, locations, weights = inputs
    bs, num_queries, num_heads = locations.shape[:3]
    size = value.element_size()
    output = bs * num_queries * num_heads * value.shape[-1] * size
    tensors = value.nbytes + locations.nbytes + weights.nbytes
    forward = tensors + output
    if not backward:
        return forward
    return forward + 2 * tensors + output  # reads inputs and grad_out, writes 3 gradients


def copy_bandwidth(nbytes: int, device: str = 'cpu', min_seconds: float = 0.3) -> float:
    """Bytes per second of ``dst.copy_(src)`` for float32 tensors of ``nbytes`` (a copy
    reads and writes each byte: 2 * nbytes moved), median of runs filling ``min_seconds``."""
    src = torch.randn(max(nbytes // 4, 1), device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    while sum(times) < min_seconds or len(times) < 5:
        if device == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times)


def floor_ms(inputs, backward: bool, bandwidth: float) -> float:
    return bytes_moved(inputs, backward) / bandwidth * 1e3


def implementations():
    impls = {'fallback (grid_sample)': fallback_grid_sample}
    if HAS_COMPILED_OP:
        impls['ddetr (compiled)'] = ms_deform_attn
    return impls


def run_once(fn, inputs, backward):
    if not backward:
        with torch.no_grad():
            fn(*inputs)
        return
    value, shapes, starts, loc, attn = inputs
    leaves = [t.detach().requires_grad_(True) for t in (value, loc, attn)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    out.backward(torch.ones_like(out))


def time_it_cuda(fn, inputs, backward, repeat, warmup=3):
    """Median time (ms) of ``repeat`` runs measured with CUDA events after ``warmup`` runs
    (kernel launches are asynchronous: host timers would measure the launch only)."""
    for _ in range(warmup):
        run_once(fn, inputs, backward)
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run_once(fn, inputs, backward)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_memory_cuda(fn, inputs):
    """Peak GPU memory (MB) one forward+backward adds above the inputs."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run_once(fn, inputs, backward=True)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def time_it(fn, inputs, backward, repeat, min_seconds=0.5, max_runs=500):
    """Median time (ms) of at least ``repeat`` runs and, for short runs, as many more as
    fill ``min_seconds`` (at most ``max_runs``): a sub-millisecond op timed only a few times
    reports the machine's hiccups rather than itself."""
    run_once(fn, inputs, backward)  # warm-up
    times = []
    while len(times) < repeat or (sum(times) < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        run_once(fn, inputs, backward)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure_memory_worker(impl_name, workload, threads):
    """Runs in a fresh process: how far one forward+backward raises the resident set above
    what the inputs already hold (MB). The peak (VmHWM) is reset after the inputs are made,
    and the parent sets MALLOC_MMAP_THRESHOLD_ so freed tensors leave the resident set."""
    torch.set_num_threads(threads)
    inputs = make_inputs(workload)
    fn = implementations()[impl_name]
    run_once(fn, inputs, backward=True)  # load libraries, warm caches
    from ddetr.ops import release_grad_cache
    release_grad_cache()  # the op's kept value-gradient blocks count in its peak
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident set
    before = process_status_kb('VmRSS')
    run_once(fn, inputs, backward=True)
    print(json.dumps({'peak_mb': (process_status_kb('VmHWM') - before) / 1024}))


def measure_memory(impl_name, workload, threads):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    out = subprocess.run([sys.executable, __file__, '--memory-worker', impl_name, workload,
                          '--threads', str(threads)], capture_output=True, text=True, check=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])['peak_mb']


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeat', type=int, default=5, help='timed runs per measurement')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='torch threads (default: all cores)')
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'],
                        help='where to run (cuda: CUDA events, warm-up, GPU peak memory)')
    parser.add_argument('--dtypes', nargs='+', default=['float32'],
                        choices=['float32', 'bfloat16', 'float16'],
                        help='input dtypes of ddetr\'s op to time (the fallback and the '
                        'ratios use float32; default: %(default)s)')
    parser.add_argument('--memory-worker', nargs=2, metavar=('IMPL', 'WORKLOAD'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return measure_memory_worker(*args.memory_worker, args.threads)

    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available (torch.cuda.is_available() '
                     'is False); run on a GPU machine or use --device cpu')
    torch.set_num_threads(args.threads)
    print(cpu_description())
    print(keep_freed_memory() + ' (both implementations; not in the memory workers)')
    print(f'ms_deform_attn benchmark: {backend_info()}; torch {torch.__version__}, '
          f'{args.threads} threads, float32, median of >= {args.repeat} runs (more for '
          f'short ones, to fill 0.5 s)')
    impls = implementations()
    ours, base = 'ddetr (compiled)', 'fallback (grid_sample)'
    metrics = (('forward', False), ('forward+backward', True))
    results, floors = {}, {}
    for workload in WORKLOADS:
        inputs = [t.to(args.device) for t in make_inputs(workload)]
        bandwidth = copy_bandwidth(inputs[0].nbytes, args.device)
        for name, fn in impls.items():
            row = results.setdefault(workload, {}).setdefault(name, {})
            for metric, backward in metrics:
                row[metric] = _time(fn, inputs, backward, args)
            row['peak MB'] = (measure_memory_cuda(fn, inputs) if args.device == 'cuda'
                              else measure_memory(name, workload, args.threads))
            print(f'  measured {workload:8s} {name}', file=sys.stderr)
        for dtype in dict.fromkeys(['float32', *args.dtypes]):  # float32: the ratios' rows
            cast = [t.to(getattr(torch, dtype)) if t.is_floating_point() else t
                    for t in inputs]
            floors[workload, dtype] = {m: floor_ms(cast, b, bandwidth) for m, b in metrics}
            if dtype != 'float32' and ours in impls:
                row = results[workload].setdefault(f'{ours} {dtype}', {})
                for metric, backward in metrics:
                    row[metric] = _time(impls[ours], cast, backward, args)
                print(f'  measured {workload:8s} {ours} {dtype}', file=sys.stderr)
        print(f'  {workload}: copy_ bandwidth {bandwidth / 1e9:.1f} GB/s', file=sys.stderr)

    print('\n| workload | implementation | forward ms | x floor | fwd+bwd ms | x floor | '
          'fwd+bwd peak MB |')
    print('|---|---|---:|---:|---:|---:|---:|')
    for workload, rows in results.items():
        for name, row in rows.items():
            dtype = name.split()[-1] if name.split()[-1] in args.dtypes else 'float32'
            floor = floors[workload, dtype]
            peak = f'{row["peak MB"]:.0f}' if 'peak MB' in row else '-'
            print(f'| {workload} | {name} | {row["forward"]:.1f} | '
                  f'{row["forward"] / floor["forward"]:.1f} | {row["forward+backward"]:.1f} | '
                  f'{row["forward+backward"] / floor["forward+backward"]:.1f} | {peak} |')
    print('\n(floor: bytes moved / copy_ bandwidth; ' + '; '.join(
        f'{w} {d}: {f["forward"]:.2f} / {f["forward+backward"]:.2f} ms'
        for (w, d), f in floors.items()) + ')')
    if ours not in impls:
        print('\nddetr._C is not built: only the fallback was measured.')
        return
    print('\n| workload | ratio fallback / ddetr | forward | fwd+bwd | '
          'peak memory (ddetr/fallback) |')
    print('|---|---|---:|---:|---:|')
    failed = []
    # The speed targets are the 2-core CPU's; on a GPU the ratios are reported as they are.
    targets = TARGETS if args.device == 'cpu' else {}
    for workload, rows in results.items():
        cells = []
        for metric in ('forward', 'forward+backward'):
            ratio = rows[base][metric] / rows[ours][metric]
            target = targets.get((workload, metric))
            mark = '' if target is None else (f' (>= {target:g}x ok)' if ratio >= target
                                               else f' (< {target:g}x MISSED)')
            if target is not None and ratio < target:
                failed.append(f'{workload} {metric}')
            cells.append(f'{ratio:.1f}x{mark}')
        mem = rows[ours]['peak MB'] / max(rows[base]['peak MB'], 1e-9)
        mem_mark = ''
        if workload == 'encoder':
            mem_mark = ' (<= 0.3 ok)' if mem <= 0.3 else ' (> 0.3 MISSED)'
            if mem > 0.3:
                failed.append('encoder memory')
        print(f'| {workload} | | {cells[0]} | {cells[1]} | {mem:.2f}{mem_mark} |')
    for dtype in args.dtypes:
        if dtype == 'float32':
            continue
        cells = [f'{rows[ours][m] / rows[f"{ours} {dtype}"][m]:.2f}x' for rows in
                 results.values() for m, _ in metrics]
        print(f'\n{dtype} speed-up over float32 (encoder fwd, fwd+bwd, decoder fwd, '
              f'fwd+bwd): {", ".join(cells)}')
    print('\nall targets met' if not failed else f'\ntargets missed: {", ".join(failed)}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(results=results, floor_ms={f'{w} {d}': f for (w, d), f in
                                                      floors.items()}), f, indent=2)


def _time(fn, inputs, backward, args):
    if args.device == 'cuda':
        return time_it_cuda(fn, inputs, backward, args.repeat)
    return time_it(fn, inputs, backward, args.repeat)


if __name__ == '__main__':
    main()
