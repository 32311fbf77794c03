"""Parameters, FLOPs and inference speed of a ddetr model: the columns of Table 1.

    python tools/analysis/model_complexity.py configs/ddetr_r50.py
    python tools/analysis/model_complexity.py configs/ddetr_r50.py --num-classes 91
    python tools/analysis/model_complexity.py CONFIG --shape 512 640 --fps-iters 0

Parameters: each shared tensor counted once; "all", "trainable" (requires_grad), and the
original release's convention, which keeps the backbone's BatchNorm affine weights as
buffers (FrozenBatchNorm2d) and so leaves them out. With --num-classes 91 (the original's
COCO category-id head) the three Table 1 configs give 40,069,665 / 40,849,660 /
41,181,529 in that convention.

FLOPs: one image of --shape H W (800 x 1333 by default), batch 1, the 'tensor' forward
(backbone to the last head outputs, no post-processing), counted by mmengine's fvcore-based
FlopAnalyzer on a jit trace. A multiply-add is ONE FLOP (fvcore's and detection papers'
convention); element-wise ops (add, softmax, sigmoid...) are not counted. The multi-scale
deformable attention op, unknown to fvcore, is counted as in the paper's A.1: 5 FLOPs per
(query, head, level, point, channel) -- 4 multiply-adds of the bilinear interpolation of
the sampled value and 1 of the attention-weighted sum -- i.e.
5 * bs * num_queries * num_heads * num_levels * num_points * head_dims per call.
The pure-PyTorch fallback's grid_sample is counted the same way (5 per sampled element).
Scaled dot-product attention (the decoder's self-attention) counts its two matmuls.

The paper's Table 1 (173G for Deformable DETR R50) follows DETR's protocol, an average
over COCO val images resized to a shorter side of 800 (most are 800 x ~1066); a fixed
800 x 1333 input gives more.

FPS: images per second of the 'predict' forward (with post-processing, no data loading)
on this machine, batch 1, on the --device (CPU by default), median of --fps-iters timed
runs after one warm-up; --fps-iters 0 skips it. Random weights: no checkpoint and no
pretrained backbone are needed, nothing is downloaded.
"""
import argparse
import json
import logging
import os
import os.path as osp
import statistics
import time
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ddetr.apis import build_detector
from ddetr.cli import entry_point
from ddetr.config import load_config

# FLOPs per (query, head, level, point, channel) of the deformable attention op (A.1):
# bilinear interpolation (4 multiply-adds) + the attention-weighted sum (1)
DEFORM_ATTN_FLOPS_PER_SAMPLE = 5
FLOP_CONVENTION = ('1 multiply-add = 1 FLOP (fvcore); ms_deform_attn = 5 FLOPs per '
                   '(query, head, level, point, channel): bilinear interpolation 4 + '
                   'weighted sum 1 (paper A.1)')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Parameters, FLOPs (counting the deformable attention op) and CPU '
                    'inference FPS of a ddetr model: the columns of Table 1.',
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file, e.g. configs/ddetr_r50.py')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333],
                        metavar=('H', 'W'), help='input image size (default: 800 1333)')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='override bbox_head.num_classes (91 = the original release)')
    parser.add_argument('--fps-iters', type=int, default=5,
                        help='timed inference runs after one warm-up (0: skip FPS)')
    parser.add_argument('--device', default='cpu', help='device of the FPS measurement')
    parser.add_argument('--no-flops', action='store_true',
                        help='skip the FLOP count (the jit trace); params and FPS only')
    parser.add_argument('--out-json', metavar='FILE', default=None,
                        help='also write params, FLOPs and FPS to this JSON file '
                        '(tools/sweep.py reads it)')
    parser.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE', default=None,
                        help='override config keys, e.g. model.num_queries=100')
    args = parser.parse_args(argv)
    if min(args.shape) < 1:
        parser.error(f'--shape {args.shape[0]} {args.shape[1]}: both sides must be >= 1')
    if args.fps_iters < 0:
        parser.error(f'--fps-iters {args.fps_iters}: must be >= 0')
    return args


# ----------------------------------------------------------------------------- params
def count_parameters(model: nn.Module) -> Dict[str, int]:
    """all / trainable / original-release convention (no backbone BN affine weights).
    ``model.parameters()`` yields each shared tensor once."""
    params = list(model.parameters())
    backbone = getattr(model, 'backbone', None)
    frozen_bn = 0
    if backbone is not None:
        frozen_bn = sum(p.numel() for m in backbone.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm)
                        for p in m.parameters(recurse=False))
    total = sum(p.numel() for p in params)
    return dict(all=total, trainable=sum(p.numel() for p in params if p.requires_grad),
                original=total - frozen_bn)


# ------------------------------------------------------------------------------ FLOPs
def deform_attn_flops(value_shape: Sequence[int], locations_shape: Sequence[int]) -> int:
    """FLOPs of one ms_deform_attn call: value (bs, num_keys, M, D), sampling_locations
    (bs, nq, M, L, K, 2) -> 5 * bs * nq * M * L * K * D."""
    bs, num_queries, num_heads, num_levels, num_points = locations_shape[:5]
    head_dims = value_shape[3]
    return (DEFORM_ATTN_FLOPS_PER_SAMPLE * bs * num_queries * num_heads * num_levels *
            num_points * head_dims)


def _deform_attn_handle(inputs, outputs) -> int:
    from mmengine.analysis.jit_handles import get_shape
    return deform_attn_flops(get_shape(inputs[0]), get_shape(inputs[3]))


def _grid_sample_handle(inputs, outputs) -> int:
    """The fallback samples (bs * M, D, nq, K) values per level with grid_sample and then
    weights and sums them: 5 FLOPs per sampled value, as the compiled op."""
    from mmengine.analysis.jit_handles import get_shape
    return DEFORM_ATTN_FLOPS_PER_SAMPLE * int(np.prod(get_shape(outputs[0])))


def _sdpa_handle(inputs, outputs) -> int:
    """softmax(Q K^T) V: (..., Lq, E) x (..., Lk, E) and (..., Lq, Lk) x (..., Lk, Ev)."""
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])
    rows = int(np.prod(q[:-1]))
    return rows * k[-2] * q[-1] + rows * k[-2] * v[-1]


def _zero_handle(inputs, outputs) -> int:
    return 0


class _TensorForward(nn.Module):
    """The detector's 'tensor' forward on an image tensor alone (what jit tracing needs)."""

    def __init__(self, detector: nn.Module, data_samples) -> None:
        super().__init__()
        self.detector = detector
        self.data_samples = data_samples

    def forward(self, inputs):
        return self.detector(inputs, self.data_samples, mode='tensor')


def dummy_batch(shape: Sequence[int], device='cpu', seed: int = 0):
    """A normalized random image of ``shape`` (H, W), batch 1, and its data sample."""
    from mmdet.structures import DetDataSample
    height, width = shape
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(1, 3, height, width, generator=gen).to(device)
    sample = DetDataSample(metainfo=dict(
        img_shape=(height, width), ori_shape=(height, width), batch_input_shape=(height, width),
        pad_shape=(height, width), scale_factor=(1.0, 1.0)))
    return inputs, [sample]


def count_flops(model: nn.Module, shape: Sequence[int],
                count_deform_attn: bool = True) -> Dict[str, object]:
    """FLOPs of the 'tensor' forward on one (H, W) image (see the module docstring).

    Returns dict(total, deform_attn (the op's share), by_module (top-level children),
    by_operator, uncounted (op names fvcore skips)). ``count_deform_attn=False`` counts the
    op as 0 (as fvcore alone would)."""
    from mmengine.analysis import FlopAnalyzer
    inputs, samples = dummy_batch(shape, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    wrapper = _TensorForward(model, samples)
    handles = {'aten::scaled_dot_product_attention': _sdpa_handle}
    if count_deform_attn:
        handles.update({'ddetr::ms_deform_attn': _deform_attn_handle,
                        'aten::grid_sampler': _grid_sample_handle})
    else:  # zero handles: fvcore's own grid_sampler handle would count 4 per element
        handles.update({'ddetr::ms_deform_attn': _zero_handle,
                        'aten::grid_sampler': _zero_handle})
    analyzer = FlopAnalyzer(wrapper, (inputs,))
    analyzer.set_op_handle(**handles)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings of data-dependent shapes
        total = analyzer.total()
        by_operator = dict(analyzer.by_operator())
        by_module = analyzer.by_module()
    model.train(was_training)
    deform = by_operator.get('ms_deform_attn', 0) + by_operator.get('grid_sampler', 0)
    children = {name: by_module.get(f'detector.{name}', 0)
                for name, _ in model.named_children()}
    return dict(total=total, deform_attn=deform, by_operator=by_operator,
                by_module={k: v for k, v in children.items() if v},
                uncounted=sorted(analyzer.unsupported_ops()))


# -------------------------------------------------------------------------------- FPS
def measure_fps(model: nn.Module, shape: Sequence[int], iters: int, device='cpu',
                log=print) -> Optional[float]:
    """Images per second of the 'predict' forward, batch 1: median of ``iters`` runs after
    one warm-up."""
    if iters <= 0:
        return None
    inputs, samples = dummy_batch(shape, device)
    model.eval()
    times: List[float] = []
    with torch.no_grad():
        for i in range(iters + 1):
            if device != 'cpu' and torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(inputs, samples, mode='predict')
            if device != 'cpu' and torch.cuda.is_available():
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if i > 0:
                times.append(elapsed)
            log(f'  {"warm-up" if i == 0 else f"run {i}/{iters}"}: {elapsed:.2f} s')
    return 1.0 / statistics.median(times)


# ------------------------------------------------------------------------------- main
def analyse(config, shape=(800, 1333), num_classes=None, fps_iters=5, device='cpu',
            cfg_options=None, log=print, with_flops=True) -> Dict[str, object]:
    """Build the model (random weights, no download) and measure everything
    (``flops`` is ``None`` with ``with_flops=False``)."""
    cfg = load_config(config, cfg_options, num_classes=num_classes, no_downloads=True)
    model = build_detector(cfg).eval()
    params = count_parameters(model)
    flops = None
    if with_flops:
        log(f'counting FLOPs at {shape[0]}x{shape[1]} (jit trace of one forward)...')
        flops = count_flops(model, shape)
    fps = None
    if fps_iters > 0:
        log(f'timing inference on {device}, {torch.get_num_threads()} threads, '
            f'{fps_iters} runs after a warm-up...')
        fps = measure_fps(model.to(device), shape, fps_iters, device, log)
    return dict(config=config, shape=tuple(shape), num_classes=cfg.model.bbox_head.num_classes,
                params=params, flops=flops, fps=fps, device=device,
                threads=torch.get_num_threads())


def format_flops(flops: float) -> str:
    return f'{flops / 1e9:.1f}G' if flops >= 1e10 else (
        f'{flops / 1e9:.2f}G' if flops >= 1e9 else f'{flops / 1e6:.1f}M')


def format_table(result: Dict[str, object]) -> str:
    params, flops = result['params'], result['flops']
    height, width = result['shape']
    fps = 'skipped' if result['fps'] is None else f'{result["fps"]:.2f}'
    if flops is None:
        flops = dict(total=0, deform_attn=0, by_module={})
        total_flops = deform_flops = 'skipped'
    else:
        total_flops, deform_flops = format_flops(flops['total']), format_flops(
            flops['deform_attn'])
    lines = [
        f'{result["config"]} ({result["num_classes"]} classes), input {height}x{width}, '
        f'batch 1',
        '',
        '| params (all) | params (trainable) | params (original release) | FLOPs | '
        f'of which ms_deform_attn | FPS ({result["device"]}, {result["threads"]} threads) |',
        '|---:|---:|---:|---:|---:|---:|',
        f'| {params["all"]:,} | {params["trainable"]:,} | {params["original"]:,} | '
        f'{total_flops} | {deform_flops} | {fps} |',
        '',
        'FLOPs by part: ' + ', '.join(f'{k} {format_flops(v)}'
                                      for k, v in flops['by_module'].items()),
        f'FLOP convention: {FLOP_CONVENTION}; element-wise ops not counted.',
        'params (original release) = all minus the backbone BatchNorm affine weights '
        '(FrozenBatchNorm2d buffers there).',
    ]
    return '\n'.join(lines)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger('mmengine').setLevel(logging.ERROR)
    result = analyse(args.config, args.shape, args.num_classes, args.fps_iters,
                     args.device, args.cfg_options, log=lambda m: print(m, flush=True),
                     with_flops=not args.no_flops)
    print()
    print(format_table(result))
    if args.out_json:
        flops = result['flops']
        record = dict(config=result['config'], shape=list(result['shape']),
                      params=result['params'], fps=result['fps'], device=result['device'],
                      threads=result['threads'],
                      flops=None if flops is None else flops['total'])
        os.makedirs(osp.dirname(osp.abspath(args.out_json)), exist_ok=True)
        with open(args.out_json, 'w') as f:
            json.dump(record, f, indent=2)
        print(f'written to {args.out_json}')
    return 0


if __name__ == '__main__':
    main()
