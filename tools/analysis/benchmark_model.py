"""ddetr against MMDetection 3.3's DeformableDETR, the same model, side by side on CPU: one
training iteration (forward + loss + backward + optimizer step) and one inference
(forward + post-processing) on the same inputs.

    python tools/analysis/benchmark_model.py                       # Table 1 base, 800x1333
    python tools/analysis/benchmark_model.py configs/ddetr_r50_refine_twostage.py \\
        --shape 512 832 --iters 3

mmdet's model is built from the equivalent mmdet config (same variant flags and sizes,
tools/model_converters/mmdet_equivalent.py), initialized at random (no pretrained
backbone, nothing downloaded), and its weights are converted into ddetr's model, so both
compute the same function: the maximum difference of their outputs is printed. On CPU
mmdet's deformable attention runs mmcv's pure-PyTorch grid_sample fallback; ddetr's runs
its compiled op.

Inputs: one random image of --shape H W per sample (batch --batch-size), with 5 random
ground-truth boxes each for training. AdamW (lr 2e-4) steps the trainable parameters, with
the implementation each project's config selects (ddetr: ``foreach``; MMDetection: torch's
default, a per-parameter loop on CPU). The timing process keeps freed memory for reuse,
as ddetr's train/test tools do (:mod:`ddetr.engine.cpu_memory`), for both models.
Times: median of --iters runs after one warm-up, the two models alternating. Peak memory:
how far one run raises the resident set (VmHWM after resetting it through
/proc/self/clear_refs) above what the process already holds, each model in a fresh
process. Ratios are mmdet / ddetr; the targets: ddetr's training iteration >= 3x faster,
inference >= 2.5x.

Activation checkpointing: ddetr's training peak is also measured (the same way, in a
fresh process) with ``with_cp=True`` on every encoder and decoder layer, and printed next
to the peak without it. On a GPU the same comparison is what decides whether a larger
image or batch fits (there, torch.cuda.max_memory_allocated is the measure to use).
"""
import argparse
import copy
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from typing import Dict

import torch

from ddetr.cli import add_cfg_options, entry_point
from ddetr.config import config_errors_named, load_config
from ddetr.converters.mmdet_equivalent import build_equivalent_pair
from ddetr.engine.cpu_info import cpu_description
from ddetr.engine.cpu_memory import keep_freed_memory, process_status_kb
from ddetr.ops import backend_info

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

SPEED_TARGETS = {'train': 3.0, 'inference': 2.5}  # mmdet time / ddetr time
IMPLS = ('ddetr', 'mmdet')
MEMORY_WORKERS = IMPLS + ('ddetr_with_cp',)  # ddetr with with_cp=True on every layer
NUM_GT = 5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='One training iteration and one inference of ddetr vs MMDetection '
                    '3.3\'s DeformableDETR (same config, same weights) on CPU: times, peak '
                    'memory, ratios.', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', default=osp.join(ROOT, 'configs', 'ddetr_r50.py'),
                        help='ddetr config (default: configs/ddetr_r50.py)')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'),
                        help='image size (default: 800 1333)')
    parser.add_argument('--batch-size', type=int, default=1, help='images per batch (1)')
    parser.add_argument('--iters', type=int, default=3, help='timed runs after a warm-up (3)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='torch threads (default: all cores)')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the peak-memory measurement (fresh processes)')
    parser.add_argument('--json', help='also write the results to this file')
    add_cfg_options(parser)
    parser.add_argument('--memory-worker', choices=MEMORY_WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.shape) < 1 or args.batch_size < 1 or args.iters < 1:
        parser.error('--shape, --batch-size and --iters must be >= 1')
    return args


def build_models(args):
    """(ddetr model, mmdet model) with the same weights, from the config."""
    cfg = load_config(args.config, args.cfg_options, no_downloads=True)
    with config_errors_named():  # a misspelt key: a ConfigError naming it, not a traceback
        return build_equivalent_pair(cfg.model, seed=0)


def make_batch(shape, batch_size, seed=0):
    """Normalized random images and data samples with NUM_GT random boxes each."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    height, width = shape
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, height, width, generator=gen)
    samples = []
    for _ in range(batch_size):
        sample = DetDataSample(metainfo=dict(
            img_shape=(height, width), ori_shape=(height, width),
            batch_input_shape=(height, width), pad_shape=(height, width),
            scale_factor=(1.0, 1.0)))
        xy = torch.rand(NUM_GT, 2, generator=gen) * torch.tensor([width, height]) * 0.7
        wh = (torch.rand(NUM_GT, 2, generator=gen) * 0.25 + 0.05) * torch.tensor([width, height])
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, 10, (NUM_GT,), generator=gen))
        samples.append(sample)
    return inputs, samples


def optimizer_kernels(args) -> Dict[str, Dict[str, object]]:
    """AdamW's implementation per model, as each project's config sets it: ddetr's schedule
    asks for ``foreach`` (and the quick start for ``fused``); MMDetection's Deformable DETR
    configs leave torch's default, a Python loop over parameters on CPU."""
    optimizer = load_config(args.config, args.cfg_options).optim_wrapper.optimizer
    ddetr = {key: optimizer[key] for key in ('foreach', 'fused') if optimizer.get(key)}
    return dict(ddetr=ddetr, ddetr_with_cp=ddetr, mmdet={})


class Workload:
    """One model's training iteration and inference on fixed inputs."""

    def __init__(self, model, inputs, samples, kernels=None) -> None:
        self.model = model
        self.inputs, self.samples = inputs, samples
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=1e-4,
            **(kernels or {}))

    def train_step(self) -> None:
        self.model.train()
        losses = self.model(self.inputs, copy.deepcopy(self.samples), mode='loss')
        loss, _ = self.model.parse_losses(losses)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def inference(self) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model(self.inputs, copy.deepcopy(self.samples), mode='predict')


def max_output_difference(ddetr_model, mmdet_model, inputs, samples) -> Dict[str, float]:
    """Largest |ddetr - mmdet| of the 'tensor' outputs (class logits, boxes) of all
    decoder layers, before any training step."""
    outs = []
    for model in (ddetr_model, mmdet_model):
        model.eval()
        with torch.no_grad():
            outs.append(model(inputs, copy.deepcopy(samples), mode='tensor'))
    return dict(logits=(outs[0][0] - outs[1][0]).abs().max().item(),
                boxes=(outs[0][1] - outs[1][1]).abs().max().item())


def time_runs(workloads: Dict[str, Workload], iters: int, log) -> Dict[str, Dict[str, float]]:
    times = {name: dict(train=[], inference=[]) for name in workloads}
    for phase in ('inference', 'train'):
        for i in range(iters + 1):  # the first run warms up
            for name, workload in workloads.items():
                start = time.perf_counter()
                workload.train_step() if phase == 'train' else workload.inference()
                elapsed = time.perf_counter() - start
                log(f'  {phase:9s} {name:5s} {"warm-up" if i == 0 else f"{i}/{iters}"}: '
                    f'{elapsed:.2f} s')
                if i > 0:
                    times[name][phase].append(elapsed)
    return {name: {phase: statistics.median(ts) * 1e3 for phase, ts in phases.items()}
            for name, phases in times.items()}


def memory_worker(args) -> None:
    """In a fresh process: peak RSS growth (MB) of one inference and one training
    iteration of one model, each after a warm-up run of the same kind."""
    torch.set_num_threads(args.threads)
    ddetr_model, mmdet_model = build_models(args)
    model = mmdet_model if args.memory_worker == 'mmdet' else ddetr_model
    del ddetr_model, mmdet_model
    if args.memory_worker == 'ddetr_with_cp':
        for layer in (*model.encoder.layers, *model.decoder.layers):
            layer.with_cp = True
    workload = Workload(model, *make_batch(args.shape, args.batch_size),
                        optimizer_kernels(args)[args.memory_worker])
    result = {}
    for phase, run in (('inference', workload.inference), ('train', workload.train_step)):
        run()  # warm-up: libraries, caches, optimizer state
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # VmHWM := VmRSS
        before = process_status_kb('VmRSS')
        run()
        result[phase] = (process_status_kb('VmHWM') - before) / 1024
    print(json.dumps(result))


def measure_memory(args, impl: str) -> Dict[str, float]:
    argv = [sys.executable, osp.abspath(__file__), args.config, '--shape', *map(str, args.shape),
            '--batch-size', str(args.batch_size), '--threads', str(args.threads),
            '--memory-worker', impl]
    if args.cfg_options:
        argv += ['--cfg-options', *args.cfg_options]
    # freed tensors go back to the system, so the resident set tracks live memory
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f'memory measurement of {impl} failed:\n{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_report(results: dict) -> str:
    t, mem = results['time_ms'], results.get('peak_mb')
    lines = ['| model | train iter (ms) | inference (ms) | train peak MB | inference peak MB |',
             '|---|---:|---:|---:|---:|']
    for name, label in (('ddetr', 'ddetr (compiled op)'),
                        ('mmdet', 'mmdet 3.3 (mmcv grid_sample fallback)')):
        cells = [f'{t[name]["train"]:.0f}', f'{t[name]["inference"]:.0f}']
        cells += ([f'{mem[name]["train"]:.0f}', f'{mem[name]["inference"]:.0f}'] if mem
                  else ['-', '-'])
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    ratios = results['ratios']
    cells = []
    for phase in ('train', 'inference'):
        ok = ratios[phase] >= SPEED_TARGETS[phase]
        cells.append(f'{ratios[phase]:.2f}x ({"ok" if ok else "MISSED"}, target >= '
                     f'{SPEED_TARGETS[phase]:g}x)')
    if mem:
        cells += [f'{ratios["train_memory"]:.2f}x', f'{ratios["inference_memory"]:.2f}x']
    else:
        cells += ['-', '-']
    lines.append('| ratio mmdet / ddetr | ' + ' | '.join(cells) + ' |')
    diff = results['max_difference']
    lines.append('')
    lines.append(f'same weights: max |ddetr - mmdet| of the outputs: logits '
                 f'{diff["logits"]:.2e}, boxes {diff["boxes"]:.2e}')
    missed = [p for p in ('train', 'inference') if ratios[p] < SPEED_TARGETS[p]]
    lines.append('targets met: ddetr >= 3x faster training, >= 2.5x inference' if not missed else
                 f'target missed: {", ".join(missed)}')
    with_cp = results.get('with_cp')
    if with_cp:
        lines.append(f'activation checkpointing (with_cp=True on every encoder and decoder '
                     f'layer): ddetr train peak {with_cp["train_peak_mb"]:.0f} MB, '
                     f'{with_cp["without_train_peak_mb"]:.0f} MB without '
                     f'({with_cp["saving"]:.2f}x less)')
    return '\n'.join(lines)


def run(args, log=print) -> dict:
    torch.set_num_threads(args.threads)
    log(cpu_description())
    # as in tools/train.py and tools/test.py (DdetrRunner), for both models
    log(keep_freed_memory())
    height, width = args.shape
    log(f'benchmark_model: {args.config}, {args.batch_size} x {height}x{width}, '
        f'{args.threads} threads, median of {args.iters} after a warm-up; {backend_info()}')
    ddetr_model, mmdet_model = build_models(args)
    inputs, samples = make_batch(args.shape, args.batch_size)
    diff = max_output_difference(ddetr_model, mmdet_model, inputs, samples)
    log(f'outputs of the two models differ by at most {diff["logits"]:.2e} (logits), '
        f'{diff["boxes"]:.2e} (boxes)')
    kernels = optimizer_kernels(args)
    workloads = {impl: Workload(model, inputs, samples, kernels[impl])
                 for impl, model in zip(IMPLS, (ddetr_model, mmdet_model))}
    log(f'AdamW kernels: ddetr {kernels["ddetr"] or "torch default"}, mmdet torch default '
        f'(as their configs set them)')
    times = time_runs(workloads, args.iters, log)
    results = dict(config=args.config, shape=[height, width], batch_size=args.batch_size,
                   threads=args.threads, iters=args.iters, time_ms=times,
                   max_difference=diff)
    ratios = {phase: times['mmdet'][phase] / times['ddetr'][phase]
              for phase in ('train', 'inference')}
    if not args.no_memory:
        del workloads, ddetr_model, mmdet_model
        memory = {}
        for impl in IMPLS:
            log(f'  peak memory of {impl} (fresh process)...')
            memory[impl] = measure_memory(args, impl)
        results['peak_mb'] = memory
        log('  peak memory of ddetr with with_cp=True (fresh process)...')
        with_cp = measure_memory(args, 'ddetr_with_cp')['train']
        results['with_cp'] = dict(train_peak_mb=with_cp,
                                  without_train_peak_mb=memory['ddetr']['train'],
                                  saving=memory['ddetr']['train'] / max(with_cp, 1e-9))
        for phase in ('train', 'inference'):
            ratios[f'{phase}_memory'] = memory['mmdet'][phase] / max(memory['ddetr'][phase],
                                                                     1e-9)
    results['ratios'] = ratios
    return results


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_worker:
        memory_worker(args)
        return 0
    results = run(args, log=lambda m: print(m, flush=True))
    print()
    print(format_report(results))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == '__main__':
    main()
