"""How far mixed precision moves the sampling locations of the deformable attention.

    python tools/analysis/amp_geometry_error.py                          # quick-start model
    python tools/analysis/amp_geometry_error.py CONFIG --shape 640 960 --checkpoint X.pth

Builds the config's model (initialized as in training, or from --checkpoint), runs one
random image of --shape H W through it in float32 and again under
``torch.autocast(--device, --dtype)``, records the sampling locations every deformable
attention call hands to ``ms_deform_attn``, and prints, per feature level, the largest
difference between the two runs in pixels of that level (location difference times
(W_l, H_l)), for the encoder and the decoder, plus the dtype the op received.

What it isolates: at the A.4 initialization the offset projections' weights are zero, so
the locations depend only on the geometry (reference points, valid ratios, proposals,
offset biases): any difference is precision lost in the geometry. With a trained
checkpoint the encoder features themselves differ under autocast, and the offsets with
them; the numbers then also include that (legitimate) difference.
"""
import argparse
import os.path as osp
from typing import Dict, List

import torch

from ddetr.apis import init_detector
from ddetr.cli import entry_point
from ddetr.models.layers import multi_scale_deformable_attention as msda

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

DTYPES = dict(bfloat16=torch.bfloat16, float16=torch.float16)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Largest sampling-location difference (pixels, per level) between a '
                    'float32 run and an autocast run of the same model and image.',
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?',
                        default=osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py'),
                        help='ddetr config (default: the quick-start config)')
    parser.add_argument('--shape', type=int, nargs=2, default=[640, 960], metavar=('H', 'W'),
                        help='image size (default: 640 960)')
    parser.add_argument('--checkpoint', help='weights to load (default: the training init)')
    parser.add_argument('--device', default='cpu', help='cpu (default) or cuda')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='bfloat16',
                        help='autocast dtype (default: bfloat16)')
    parser.add_argument('--seed', type=int, default=0, help='init and image seed (0)')
    return parser.parse_args(argv)


def build_model(args):
    """The config's detector in eval mode: --checkpoint loaded, or its training init."""
    return init_detector(args.config, args.checkpoint, device=args.device, seed=args.seed)


def record_locations(model, inputs, autocast_dtype=None) -> List[dict]:
    """Run the model once; return, per attention call, its locations (float64 copy), the
    dtype the op got and the level shapes."""
    calls = []
    original = msda.ms_deform_attn

    def spy(value, spatial_shapes, level_start_index, sampling_locations, *rest, **kwargs):
        calls.append(dict(locations=sampling_locations.detach().double(),
                          dtype=sampling_locations.dtype, shapes=spatial_shapes.tolist(),
                          num_queries=sampling_locations.shape[1], num_keys=value.shape[1]))
        return original(value, spatial_shapes, level_start_index, sampling_locations, *rest,
                        **kwargs)

    msda.ms_deform_attn = spy
    try:
        with torch.no_grad(), torch.autocast(inputs.device.type, dtype=autocast_dtype,
                                             enabled=autocast_dtype is not None):
            model._forward(inputs)
    finally:
        msda.ms_deform_attn = original
    return calls


def per_level_error(ref: dict, test: dict) -> List[float]:
    """Max |difference| per level, in pixels of that level."""
    errors = []
    for level, (height, width) in enumerate(ref['shapes']):
        scale = torch.tensor([width, height], dtype=torch.float64, device=ref['locations'].device)
        diff = (ref['locations'][:, :, :, level] - test['locations'][:, :, :, level]) * scale
        errors.append(diff.abs().max().item())
    return errors


def run(args, log=print, model=None) -> Dict[str, List[float]]:
    model = model if model is not None else build_model(args)
    gen = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(1, 3, *args.shape, generator=gen).to(args.device)
    ref = record_locations(model, inputs)
    test = record_locations(model, inputs, DTYPES[args.dtype])
    results = {}
    for part in ('encoder', 'decoder'):
        pairs = [(r, t) for r, t in zip(ref, test)
                 if (r['num_queries'] == r['num_keys']) == (part == 'encoder')]
        if not pairs:
            continue
        errors = [max(e) for e in zip(*(per_level_error(r, t) for r, t in pairs))]
        dtypes = sorted({str(t['dtype']).replace('torch.', '') for _, t in pairs})
        results[part] = errors
        shapes = ', '.join(f'{h}x{w}' for h, w in pairs[0][0]['shapes'])
        log(f'{part}: {len(pairs)} attention calls, levels {shapes}, op got {"/".join(dtypes)}'
            f' locations; max |loc({args.dtype} autocast) - loc(float32)| per level (px): '
            + ', '.join(f'{e:.4f}' for e in errors))
    return results


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    print(f'{args.config}, input {args.shape[0]}x{args.shape[1]}, {args.device}, '
          f'autocast {args.dtype}', flush=True)
    run(args, model=build_model(args))
    return 0


if __name__ == '__main__':
    main()
