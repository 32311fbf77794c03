"""Prepare a trained checkpoint for release: keep the weights and the meta, drop the
training state, and write it twice, as .pth and as .safetensors, named by its hash.

    python tools/misc/publish_model.py work_dirs/ddetr_r50/epoch_50.pth ddetr_r50_coco.pth
    # -> ddetr_r50_coco-1a2b3c4d.pth and ddetr_r50_coco-1a2b3c4d.safetensors

The optimizer, the message hub, the parameter schedulers and anything else but
``state_dict`` and ``meta`` are left out (and the meta's ``hook_msgs``, the paths of the
last checkpoints). ``1a2b3c4d`` is the first 8 hex digits of the sha256 of the written
.pth, as MMDetection's publish_model names its files. The .safetensors file holds the same
tensors and, as its metadata (JSON strings), the same meta: the config's text (``cfg``),
its name (``config_name``, from the run's experiment name or --config-name) and the class
names (``dataset_meta``), which tools/demo.py and ddetr.apis.DetInferencer use to name the
classes. Both files are read back and compared with the input's weights before the tool
reports them.
"""
import argparse
import hashlib
import os
import os.path as osp
import re

import torch

from ddetr.cli import add_trust_checkpoint, apply_trust_checkpoint, entry_point
from ddetr.engine.checkpoint import encode_metadata, load_checkpoint_file, save_safetensors
from ddetr.engine.state_dict import state_dict_of
from ddetr.errors import CheckpointError, ConfigError

# meta entries that describe the training run's files, not the model
TRAINING_META = ('hook_msgs',)
# mmengine's experiment name: '<config name>_<YYYYmmdd_HHMMSS>'
TIMESTAMP = re.compile(r'_\d{8}_\d{6}$')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Strip a trained checkpoint to its weights and meta, and write it as '
                    'OUT-<sha256[:8]>.pth and OUT-<sha256[:8]>.safetensors.', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('in_file', help='checkpoint written by tools/train.py (.pth), or a '
                        '.safetensors file')
    parser.add_argument('out_file', help='OUT.pth: the published files are OUT-<hash>.pth and '
                        'OUT-<hash>.safetensors')
    parser.add_argument('--config-name', help='the config name stored in the meta (default: '
                        'from the run\'s experiment name)')
    add_trust_checkpoint(parser)
    return parser.parse_args(argv)


def published_meta(meta: dict, config_name: str = None) -> dict:
    """The checkpoint's meta without the training run's file paths, with ``config_name``
    (given, already there, or the experiment name without mmengine's timestamp)."""
    meta = {k: v for k, v in meta.items() if k not in TRAINING_META}
    if config_name is None and 'config_name' not in meta and meta.get('experiment_name'):
        config_name = TIMESTAMP.sub('', str(meta['experiment_name']))
    if config_name:
        meta['config_name'] = config_name
    return meta


def metadata_entries(meta: dict):
    """(the meta entries safetensors metadata can hold as JSON, the names of the others)."""
    kept, left_out = {}, []
    for key, value in meta.items():
        try:
            encode_metadata({key: value})
            kept[key] = value
        except CheckpointError:
            left_out.append(key)
    return kept, left_out


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def check_weights(path: str, state_dict: dict) -> None:
    """Read ``path`` back (as any tool would) and compare every tensor with ``state_dict``."""
    loaded = state_dict_of(load_checkpoint_file(path, map_location='cpu'), path)
    if loaded.keys() != state_dict.keys():
        raise CheckpointError(f'{path} read back with other keys than written')
    for key, value in state_dict.items():
        if loaded[key].dtype != value.dtype or not torch.equal(loaded[key], value):
            raise CheckpointError(f'{path} read back with another {key}')


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    apply_trust_checkpoint(args)
    if not osp.isfile(args.in_file):
        raise CheckpointError(f'checkpoint {args.in_file} does not exist')
    stem = re.sub(r'\.(pth|safetensors)$', '', args.out_file)
    directory = osp.dirname(osp.abspath(stem))
    if not osp.isdir(directory):
        raise ConfigError(f'{args.out_file}: folder {directory} does not exist')

    checkpoint = load_checkpoint_file(args.in_file, map_location='cpu')
    state_dict = state_dict_of(checkpoint, args.in_file)
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    meta = published_meta(meta, args.config_name)
    dropped = sorted(k for k in checkpoint if k not in ('state_dict', 'meta')) if (
        'state_dict' in checkpoint) else []

    unnamed = stem + '.pth'
    torch.save({'state_dict': state_dict, 'meta': meta}, unnamed)
    name = f'{stem}-{sha256_of(unnamed)[:8]}'
    os.replace(unnamed, name + '.pth')
    metadata, left_out = metadata_entries(meta)
    save_safetensors(name + '.safetensors', state_dict, metadata)
    for path in (name + '.pth', name + '.safetensors'):
        check_weights(path, state_dict)

    print(f'{args.in_file}: {len(state_dict)} tensors'
          + (f'; left out: {", ".join(dropped)}' if dropped else ''))
    classes = (meta.get('dataset_meta') or {}).get('classes')
    print(f'config: {meta.get("config_name", "(none: give --config-name)")}; classes: '
          + (f'{len(classes)} ({", ".join(map(str, classes[:5]))}'
             f'{", ..." if len(classes) > 5 else ""})' if classes else
             '(none in the meta: tools will name them from the config)'))
    if left_out:
        print(f'not in the .safetensors metadata (not JSON): {", ".join(left_out)}')
    for path in (name + '.pth', name + '.safetensors'):
        print(f'wrote {path} ({osp.getsize(path) / 2 ** 20:.1f} MiB)')
    return 0


if __name__ == '__main__':
    main()
