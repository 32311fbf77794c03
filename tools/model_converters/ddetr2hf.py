#!/usr/bin/env python
"""Convert a ddetr checkpoint into a Hugging Face transformers folder that
`DeformableDetrForObjectDetection.from_pretrained(OUT_DIR)` loads (config.json +
model.safetensors). The key correspondence is in :mod:`ddetr.converters.huggingface`; see
docs/pretrained_weights.md."""
import argparse
import json
import os
import os.path as osp

from ddetr.apis import build_detector
from ddetr.cli import add_trust_checkpoint, apply_trust_checkpoint, entry_point
from ddetr.config import load_config
from ddetr.converters.common import report, verify_against_config
from ddetr.converters.huggingface import (
    coco91_classes,
    ddetr_variant,
    hf_config,
    tied_heads_warning,
    to_hf_state_dict,
)
from ddetr.engine.checkpoint import load_checkpoint_file
from ddetr.engine.state_dict import state_dict_of
from ddetr.errors import ConversionError

CLASS_KEY = 'bbox_head.cls_branches.0.weight'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a ddetr checkpoint into a Hugging Face transformers folder '
                    '(config.json + model.safetensors) for DeformableDetrForObjectDetection. '
                    'id2label comes from the checkpoint\'s dataset_meta (91 classes without '
                    'one: COCO\'s category ids).')
    parser.add_argument('checkpoint', metavar='CKPT', help='ddetr checkpoint (.pth/.safetensors)')
    parser.add_argument('config', metavar='CONFIG', help='the ddetr config of the checkpoint '
                        '(its number of classes is taken from the checkpoint)')
    parser.add_argument('out_dir', metavar='OUT_DIR', help='folder to write (created)')
    add_trust_checkpoint(parser)
    return parser.parse_args(argv)


def classes_for(meta: dict, num_classes: int):
    classes = (meta.get('dataset_meta') or {}).get('classes')
    if classes and len(classes) == num_classes:
        return tuple(classes)
    if num_classes == 91:
        return coco91_classes()
    return tuple(f'class_{i}' for i in range(num_classes))


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    apply_trust_checkpoint(args)
    if not osp.isfile(args.checkpoint):
        raise ConversionError(f'{args.checkpoint}: no such file')
    ckpt = load_checkpoint_file(args.checkpoint, map_location='cpu')
    state_dict = state_dict_of(ckpt, args.checkpoint)
    meta = ckpt.get('meta') or {}
    if CLASS_KEY not in state_dict:
        raise ConversionError(f'{args.checkpoint}: no {CLASS_KEY}; not a ddetr DeformableDETR '
                              f'checkpoint (convert a release first)')
    num_classes = state_dict[CLASS_KEY].shape[0]
    problems = verify_against_config(state_dict, args.config, num_classes)
    report(problems, f'does not fit {args.config}')
    if problems:
        raise ConversionError(f'{args.checkpoint} does not fit {args.config}')

    model = build_detector(load_config(args.config, num_classes=num_classes, no_downloads=True))
    variant = ddetr_variant(model, args.config)
    warning = tied_heads_warning(state_dict, variant)
    if warning:
        print(f'warning: {warning}')
    classes = classes_for(meta, num_classes)
    tensors = to_hf_state_dict(state_dict, variant)

    from safetensors.torch import save_file
    if osp.exists(args.out_dir) and not osp.isdir(args.out_dir):
        raise ConversionError(f'{args.out_dir}: exists and is not a folder')
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'config.json'), 'w') as f:
        json.dump(hf_config(variant, classes), f, indent=2)
        f.write('\n')
    save_file(tensors, osp.join(args.out_dir, 'model.safetensors'), metadata={'format': 'pt'})
    print(f'wrote {args.out_dir}: config.json and model.safetensors ({len(tensors)} tensors), '
          f'with_box_refine={variant["with_box_refine"]}, '
          f'two_stage={variant["as_two_stage"]}, {num_classes} labels')
    return 0


if __name__ == '__main__':
    main()
