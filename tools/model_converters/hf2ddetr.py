#!/usr/bin/env python
"""Convert a Hugging Face transformers Deformable DETR folder (config.json + model.safetensors
or pytorch_model.bin, as `hf download SenseTime/deformable-detr --local-dir DIR` writes it)
into a ddetr checkpoint. The key correspondence is in :mod:`ddetr.converters.huggingface`;
see docs/pretrained_weights.md."""
import argparse
import os.path as osp

from ddetr.cli import entry_point
from ddetr.converters.common import (
    coco80_dataset_meta,
    report,
    save_checkpoint,
    select_class_rows,
    verify_against_config,
)
from ddetr.converters.huggingface import (
    REPO_ROOT,
    base_config_for,
    cfg_options,
    check_coco_ids,
    child_config_text,
    config_overrides,
    convert_state_dict,
    merged_overrides,
    num_classes_of,
    read_hf_config,
    read_hf_weights,
    variant_from_config,
)
from ddetr.errors import ConversionError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a Hugging Face transformers DeformableDetrForObjectDetection '
                    'folder (config.json + model.safetensors or pytorch_model.bin) into a '
                    'ddetr checkpoint (mmengine format: state_dict + meta, with the class '
                    'names of id2label). The weights are read from the file; transformers '
                    'is not needed. Prints the ddetr config to use.')
    parser.add_argument('src', metavar='HF_DIR', help='the model folder (download it first: '
                        'hf download SenseTime/deformable-detr --local-dir HF_DIR)')
    parser.add_argument('dst', metavar='DST', help='where to write the ddetr checkpoint (.pth)')
    parser.add_argument('--write-config', metavar='PATH', default=None,
                        help='also write a ddetr config for these weights: _base_ = the '
                             'Table 1 config of the variant, plus the keys that differ')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='80 maps the 91 labels of transformers\' COCO checkpoints (COCO '
                             'category ids, "N/A" in the gaps) to the 80 contiguous COCO '
                             'classes of ddetr\'s configs, as tools/test.py on COCO needs; '
                             'the two-stage encoder head keeps its row 0. Default: '
                             'unchanged (91, as the original release)')
    return parser.parse_args(argv)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.write_config and not osp.isdir(osp.dirname(osp.abspath(args.write_config))):
        raise ConversionError(f'--write-config {args.write_config}: its folder does not exist')
    config = read_hf_config(args.src)
    where = osp.join(args.src, 'config.json')
    variant = variant_from_config(config, where)
    state_dict, weights_file = read_hf_weights(args.src)
    print(f'read {osp.join(args.src, weights_file)}: {len(state_dict)} tensors')
    converted, unmapped, notes = convert_state_dict(state_dict, variant)
    report(unmapped, 'not mapped (left out)')
    report(notes, 'heads')
    classes = variant.pop('classes')
    num_classes = num_classes_of(converted, classes, where)
    dataset_meta = dict(classes=classes) if classes else None
    if args.num_classes is not None and args.num_classes != num_classes:
        check_coco_ids(classes, where)
        select_class_rows(converted, args.num_classes,
                          encoder_branch=(variant['num_decoder_layers']
                                          if variant['as_two_stage'] else None))
        num_classes = args.num_classes
        dataset_meta = coco80_dataset_meta()

    base = base_config_for(variant)
    overrides = config_overrides(variant, num_classes, base)
    problems = verify_against_config(converted, base, num_classes,
                                     merged_overrides(base, overrides))
    report(problems, 'does not fit the ddetr model')
    if problems:
        raise ConversionError(f'the converted weights do not fit {base} with {overrides}')

    meta = dict(source=f'Hugging Face transformers ({(config.get("architectures") or ["?"])[0]}'
                       f', written by transformers {config.get("transformers_version", "?")})',
                source_dir=osp.abspath(args.src), source_file=weights_file,
                converter='tools/model_converters/hf2ddetr.py', num_classes=num_classes,
                ddetr_config=osp.relpath(base, REPO_ROOT), **variant)
    if dataset_meta:
        meta['dataset_meta'] = dataset_meta
    save_checkpoint(converted, meta, args.dst)
    print(f'wrote {args.dst}: {len(converted)} tensors, with_box_refine='
          f'{variant["with_box_refine"]}, as_two_stage={variant["as_two_stage"]}, '
          f'num_feature_levels={variant["num_feature_levels"]}, num_classes={num_classes}')

    if args.write_config:
        header = [f'ddetr config for {osp.abspath(args.src)}, written by '
                  f'tools/model_converters/hf2ddetr.py: the keys that differ from _base_']
        with open(args.write_config, 'w') as f:
            f.write(child_config_text(base, overrides, args.write_config, header))
        print(f'wrote {args.write_config}; test with:\n'
              f'  python tools/test.py {args.write_config} {args.dst}')
    else:
        options = cfg_options(overrides)
        print(f'ddetr config: {osp.relpath(base)}' +
              (f' with --cfg-options {" ".join(options)}' if options else ''))
        print(f'  python tools/test.py {osp.relpath(base)} {args.dst}' +
              (f' --cfg-options {" ".join(options)}' if options else ''))
    return 0


if __name__ == '__main__':
    main()
