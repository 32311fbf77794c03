#!/usr/bin/env python
"""Convert a checkpoint of an MMDetection 3.x DeformableDETR into a ddetr checkpoint.
The key correspondence is in :mod:`ddetr.converters.mmdetection`; see docs/checkpoints.md."""
import argparse
import os.path as osp

from ddetr.cli import entry_point
from ddetr.converters.common import (
    coco80_dataset_meta,
    report,
    save_checkpoint,
    verify_against_config,
)
from ddetr.converters.mmdetection import convert_state_dict, load_mmdet_state_dict
from ddetr.errors import ConversionError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an MMDetection 3.x DeformableDETR checkpoint (mmengine format, '
                    'or a bare state dict) into a ddetr checkpoint (mmengine format: '
                    'state_dict + meta). Keys that match no rule are printed and dropped.')
    parser.add_argument('src', metavar='SRC', help='MMDetection checkpoint (.pth)')
    parser.add_argument('dst', metavar='DST', help='where to write the ddetr checkpoint')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='classes of the converted head; 80 maps a 91-row head (COCO '
                             'category ids) to the 80 contiguous COCO classes by category id '
                             '(a two-stage encoder head keeps its row 0). Default: unchanged')
    parser.add_argument('--trusted', action='store_true',
                        help='unpickle any Python object the file holds (a pickle can run '
                             'code: only for files you trust)')
    parser.add_argument('--config', default=None,
                        help='a ddetr config to check the result against: reports missing, '
                             'unexpected and mis-shaped keys (no weights are downloaded)')
    return parser.parse_args(argv)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    state_dict, src_meta = load_mmdet_state_dict(args.src, args.trusted)
    converted, unmapped, info = convert_state_dict(state_dict, args.num_classes)
    report(unmapped, 'not mapped (left out)')
    meta = dict(source='mmdetection', source_file=osp.basename(args.src),
                converter='tools/model_converters/mmdet2ddetr.py', **info)
    if info['num_classes'] == 80:
        meta['dataset_meta'] = coco80_dataset_meta()
    elif 'dataset_meta' in src_meta:
        meta['dataset_meta'] = src_meta['dataset_meta']
    if args.config:
        problems = verify_against_config(converted, args.config, info['num_classes'])
        report(problems, f'does not fit {args.config}')
        if problems:
            raise ConversionError(f'the converted weights do not fit {args.config}')
    save_checkpoint(converted, meta, args.dst)
    print(f'wrote {args.dst}: {len(converted)} tensors, {info}')
    return 0


if __name__ == '__main__':
    main()
