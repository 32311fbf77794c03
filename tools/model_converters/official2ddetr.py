#!/usr/bin/env python
"""Convert a checkpoint of the original Deformable DETR release
(fundamentalvision/Deformable-DETR) into a ddetr checkpoint.
The key correspondence is in :mod:`ddetr.converters.official`; see docs/checkpoints.md."""
import argparse
import os.path as osp

from ddetr.cli import entry_point
from ddetr.converters.common import (
    coco80_dataset_meta,
    report,
    save_checkpoint,
    verify_against_config,
)
from ddetr.converters.official import convert_state_dict, load_official_checkpoint
from ddetr.errors import ConversionError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert a checkpoint of the original Deformable DETR release ({'model', "
                    "'args', ...}) into a ddetr checkpoint (mmengine format: state_dict + "
                    "meta). Only tensors and the release's argparse args are unpickled "
                    "unless --trusted is given.")
    parser.add_argument('src', metavar='SRC', help="original release checkpoint (.pth)")
    parser.add_argument('dst', metavar='DST', help='where to write the ddetr checkpoint')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='80 maps the 91-row heads (COCO category ids) to the 80 '
                             'contiguous COCO classes by category id; the two-stage encoder '
                             'head keeps its row 0. Default: unchanged (91)')
    parser.add_argument('--trusted', action='store_true',
                        help='unpickle any Python object the file holds (a pickle can run '
                             'code: only for files you trust)')
    parser.add_argument('--config', default=None,
                        help='a ddetr config to check the result against (reports missing, '
                             'unexpected and mis-shaped keys; downloads nothing)')
    return parser.parse_args(argv)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    state_dict, src_args = load_official_checkpoint(args.src, args.trusted)
    converted, unmapped, aliases, variant = convert_state_dict(state_dict, src_args,
                                                               args.num_classes)
    report(unmapped, 'not mapped (left out)')
    report(aliases, 'not mapped: aliases of mapped tensors (dropped)')
    if variant.get('dilation'):
        print('warning: the source model uses a dilated C5 (DC5); ddetr configs do not')
    meta = dict(source='fundamentalvision/Deformable-DETR',
                source_file=osp.basename(args.src),
                converter='tools/model_converters/official2ddetr.py', **variant)
    if variant['num_classes'] == 80:
        meta['dataset_meta'] = coco80_dataset_meta()
    if args.config:
        problems = verify_against_config(converted, args.config, variant['num_classes'])
        report(problems, f'does not fit {args.config}')
        if problems:
            raise ConversionError(f'the converted weights do not fit {args.config}')
    save_checkpoint(converted, meta, args.dst)
    print(f'wrote {args.dst}: {len(converted)} tensors, '
          f'with_box_refine={variant["with_box_refine"]}, '
          f'as_two_stage={variant["as_two_stage"]}, num_classes={variant["num_classes"]}')
    return 0


if __name__ == '__main__':
    main()
