"""Run a set of configs and tabulate their COCO results like Table 2 of the Deformable
DETR paper (switch columns + AP, AP50, AP75, APs, APm, APl)."""
import argparse
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

EPILOG = """\
modes:
  (default)          for each config, train then test (skipping runs that already have
                     metrics, unless --force), then write the table
  --print-commands   print one shell line per config (for a cluster), run nothing
  --collect-only     run nothing, only collect results and write the table

each run lives in WORK_DIR/NAME, NAME being the config's file name without .py:
  train:  python tools/train.py CONFIG --work-dir WORK_DIR/NAME [TRAIN_ARGS]
  test:   python tools/test.py CONFIG <WORK_DIR/NAME/last_checkpoint> --work-dir WORK_DIR/NAME
          [TEST_ARGS]
TRAIN_ARGS / TEST_ARGS may use {config}, {name} and {work_dir} (the run's folder).

result contract (the first that exists wins):
  WORK_DIR/NAME/FAILED            run failed; its first line is the reason (the sweep
                                  writes it when train or test exits non-zero and deletes
                                  it when it starts the run again)
  WORK_DIR/NAME/metrics.json      {"coco/bbox_mAP": 0.43, "coco/bbox_mAP_50": ..., ...},
                                  or that dict under a "metrics" key (as tools/test.py
                                  writes it to its work dir); keys are also accepted
                                  without the "coco/" prefix
  WORK_DIR/NAME/<time>/<time>.json       the metrics mmengine logs for a test run
  WORK_DIR/NAME/<time>/vis_data/scalars.json
                                  the last validation during training
  otherwise the run is "missing". Metrics are in [0, 1] and shown x100.

switch columns, read from each config (mmengine Config, nothing is built):
  MS inputs     number of feature levels > 1 (model.num_feature_levels, or num_levels of
                the encoder attention, or neck.num_outs)
  MS attention  a model key named multi_scale_attention / ms_attention if one exists,
                else the same as MS inputs
  K             model.num_points, or num_points of the encoder attention (else any
                num_points in the model)
  FPNs          neck type: BiFPN / FPN-like type name / "w/o" (ChannelMapper or none)
  a config may state or override any of them:
      sweep_row = dict(ms_inputs=True, ms_attention=True, num_points=4, fpn='w/o')

examples:
  python tools/sweep.py configs/table2 --work-dir work_dirs/table2
  python tools/sweep.py configs/table2 --work-dir work_dirs/table2 --print-commands
  python tools/sweep.py configs/table2 --work-dir work_dirs/table2 --collect-only
"""

METRICS = (('AP', 'bbox_mAP'), ('AP50', 'bbox_mAP_50'), ('AP75', 'bbox_mAP_75'),
           ('APs', 'bbox_mAP_s'), ('APm', 'bbox_mAP_m'), ('APl', 'bbox_mAP_l'))
SWITCHES = ('ms_inputs', 'ms_attention', 'num_points', 'fpn')
MS_ATTENTION_KEYS = ('multi_scale_attention', 'ms_attention', 'ms_attn')


# --------------------------------------------------------------------------- configs
def find_configs(paths: List[str]) -> List[str]:
    """Config files from files and folders (a folder's ``*.py``, sorted, skipping names
    starting with ``_`` such as ``_base_``), in the order given, without duplicates."""
    found = []
    for path in paths:
        if osp.isdir(path):
            found += sorted(osp.join(path, n) for n in os.listdir(path)
                            if n.endswith('.py') and not n.startswith('_'))
        elif osp.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(f'no config file or folder: {path}')
    return list(dict.fromkeys(found))


def _find_key(node: Any, keys: Tuple[str, ...]) -> Any:
    """First value of any of ``keys`` in a nested dict/list, depth first."""
    if isinstance(node, dict):
        for key in keys:
            if key in node:
                return node[key]
        node = list(node.values())
    if isinstance(node, (list, tuple)):
        for child in node:
            value = _find_key(child, keys)
            if value is not None:
                return value
    return None


def _get(node: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fpn_name(neck: Any) -> str:
    necks = neck if isinstance(neck, (list, tuple)) else [neck]
    types = [str(n.get('type', '')) for n in necks if isinstance(n, dict)]
    for t in types:
        if 'bifpn' in t.lower():
            return 'BiFPN'
    for t in types:
        if 'fpn' in t.lower():
            return 'FPN' if t.split('.')[-1] == 'FPN' else t
    return 'w/o'


def read_switches(config: dict) -> Dict[str, Any]:
    """The Table 2 switches of one config (a plain dict), ``None`` where unknown."""
    model = config.get('model') or {}
    enc_attn = _get(model, 'encoder', 'layer_cfg', 'self_attn_cfg') or {}
    levels = model.get('num_feature_levels', enc_attn.get('num_levels'))
    if levels is None:
        levels = _find_key(model, ('num_levels', 'num_feature_levels'))
    if levels is None:
        levels = _find_key(model.get('neck'), ('num_outs',))
    ms_inputs = None if levels is None else int(levels) > 1
    ms_attention = _find_key(model, MS_ATTENTION_KEYS)
    ms_attention = ms_inputs if ms_attention is None else bool(ms_attention)
    num_points = model.get('num_points', enc_attn.get('num_points'))
    if num_points is None:  # anywhere in the encoder, then anywhere in the model
        num_points = _find_key(model.get('encoder') or {}, ('num_points',))
    if num_points is None:
        num_points = _find_key(model, ('num_points',))
    switches = dict(ms_inputs=ms_inputs, ms_attention=ms_attention, num_points=num_points,
                    fpn=_fpn_name(model.get('neck')))
    override = config.get('sweep_row') or {}
    switches.update({k: v for k, v in dict(override).items() if k in SWITCHES})
    return switches


def load_config(path: str) -> dict:
    """The config as a plain dict (``_base_`` resolved, custom modules not imported)."""
    from mmengine.config import Config
    return Config.fromfile(path, import_custom_modules=False).to_dict()


# --------------------------------------------------------------------------- results
def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _bbox_metrics(record: Optional[dict]) -> Optional[Dict[str, float]]:
    """The six AP values of a metrics record, keyed like ``bbox_mAP``; ``None`` when it
    has no ``bbox_mAP``."""
    if not record:
        return None
    if isinstance(record.get('metrics'), dict):  # tools/test.py: {config, checkpoint, metrics}
        record = record['metrics']
    found = {}
    for _, key in METRICS:
        for name in (f'coco/{key}', key):
            if isinstance(record.get(name), (int, float)):
                found[key] = float(record[name])
                break
    return found if 'bbox_mAP' in found else None


def _last_scalars(path: str) -> Optional[Dict[str, float]]:
    """The last validation record of an mmengine ``scalars.json`` (JSON lines)."""
    last = None
    try:
        with open(path) as f:
            for line in f:
                try:
                    last = _bbox_metrics(json.loads(line)) or last
                except ValueError:
                    continue
    except OSError:
        return None
    return last


def collect(run_dir: str) -> Tuple[str, Optional[Dict[str, float]], str]:
    """``(status, metrics, note)`` of one run folder; status is ``ok``, ``failed`` or
    ``missing`` (see the result contract in ``--help``)."""
    if not osp.isdir(run_dir):
        return 'missing', None, 'no work dir'
    failed = osp.join(run_dir, 'FAILED')
    if osp.isfile(failed):
        with open(failed) as f:
            reason = f.readline().strip()
        return 'failed', None, reason or 'FAILED marker'
    metrics = _bbox_metrics(_read_json(osp.join(run_dir, 'metrics.json')))
    if metrics:
        return 'ok', metrics, 'metrics.json'
    stamps = sorted((n for n in os.listdir(run_dir) if osp.isdir(osp.join(run_dir, n))),
                    reverse=True)  # mmengine's timestamps sort by time
    for stamp in stamps:
        metrics = _bbox_metrics(_read_json(osp.join(run_dir, stamp, f'{stamp}.json')))
        if metrics:
            return 'ok', metrics, f'test log {stamp}'
    for stamp in stamps:
        metrics = _last_scalars(osp.join(run_dir, stamp, 'vis_data', 'scalars.json'))
        if metrics:
            return 'ok', metrics, f'last validation {stamp}'
    return 'missing', None, 'no metrics in the work dir'


# ----------------------------------------------------------------------------- table
def _tick(value: Optional[bool]) -> str:
    return '?' if value is None else ('✓' if value else '')


def _ap(value: Optional[float]) -> str:
    if value is None:
        return '–'
    return 'n/a' if value < 0 else f'{value * 100:.1f}'  # -1: no boxes of that size


def make_table(rows: List[dict]) -> str:
    """Markdown table; each row has ``name``, the switches, ``status``, ``metrics``,
    ``note``. Failed and missing runs show their status in the AP column and are
    explained under the table."""
    header = ['config', 'MS inputs', 'MS attention', 'K', 'FPNs'] + [m for m, _ in METRICS]
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join([':--'] + [':-:'] * (len(header) - 1)) + '|']
    notes = []
    for row in rows:
        cells = [f"`{row['name']}`", _tick(row['ms_inputs']), _tick(row['ms_attention']),
                 '?' if row['num_points'] is None else str(row['num_points']),
                 row['fpn'] or '?']
        if row['status'] == 'ok':
            cells += [_ap(row['metrics'].get(key)) for _, key in METRICS]
        else:
            cells += [f"**{row['status']}**"] + ['–'] * (len(METRICS) - 1)
            notes.append(f"- `{row['name']}`: {row['status']} ({row['note']})")
        lines.append('| ' + ' | '.join(cells) + ' |')
    if notes:
        lines += [''] + notes
    return '\n'.join(lines) + '\n'


def build_rows(configs: List[str], work_dir: str) -> List[dict]:
    rows = []
    for config in configs:
        name = osp.splitext(osp.basename(config))[0]
        try:
            switches = read_switches(load_config(config))
        except Exception as e:  # a broken config still gets its row
            print(f'warning: cannot read {config}: {e}', file=sys.stderr)
            switches = dict(ms_inputs=None, ms_attention=None, num_points=None, fpn=None)
        status, metrics, note = collect(osp.join(work_dir, name))
        rows.append(dict(name=name, **switches, status=status, metrics=metrics, note=note))
    return rows


# ------------------------------------------------------------------------------ runs
def commands(config: str, run_dir: str, args) -> Tuple[List[str], List[str]]:
    """The train and test command lines of one run; the test's checkpoint is the
    placeholder ``{checkpoint}``."""
    fields = dict(config=config, name=osp.basename(run_dir), work_dir=run_dir)
    train = [args.python, args.train_script, config, '--work-dir', run_dir]
    train += [a.format(**fields) for a in shlex.split(args.train_args)]
    test = [args.python, args.test_script, config, '{checkpoint}', '--work-dir', run_dir]
    test += [a.format(**fields) for a in shlex.split(args.test_args)]
    return train, test


def shell_line(config: str, run_dir: str, args) -> str:
    train, test = commands(config, run_dir, args)
    q = shlex.quote
    failed = q(osp.join(run_dir, 'FAILED'))
    test_line = ' '.join(q(a) for a in test).replace(
        q('{checkpoint}'), f'"$(cat {q(osp.join(run_dir, "last_checkpoint"))})"')
    return (f'mkdir -p {q(run_dir)} && rm -f {failed} && '
            f"{{ {' '.join(q(a) for a in train)} && {test_line} || "
            f'echo "train or test exited with code $?" > {failed}; }}')


def run_one(config: str, run_dir: str, args) -> None:
    """Train then test one config; a failure leaves ``run_dir/FAILED`` with the reason."""
    os.makedirs(run_dir, exist_ok=True)
    for stale in ('FAILED', 'metrics.json'):
        if osp.exists(osp.join(run_dir, stale)):
            os.remove(osp.join(run_dir, stale))
    train, test = commands(config, run_dir, args)

    def fail(reason: str) -> None:
        print(f'[sweep] {osp.basename(run_dir)}: {reason}', flush=True)
        with open(osp.join(run_dir, 'FAILED'), 'w') as f:
            f.write(reason + '\n')

    print(f"[sweep] {' '.join(train)}", flush=True)
    code = subprocess.call(train, cwd=REPO)
    if code != 0:
        return fail(f'train exited with code {code}')
    try:
        with open(osp.join(run_dir, 'last_checkpoint')) as f:
            checkpoint = f.read().strip()
    except OSError:
        return fail('train wrote no last_checkpoint')
    test = [checkpoint if a == '{checkpoint}' else a for a in test]
    print(f"[sweep] {' '.join(test)}", flush=True)
    code = subprocess.call(test, cwd=REPO)
    if code != 0:
        return fail(f'test exited with code {code}')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('configs', nargs='+', help='config files and/or folders of configs')
    p.add_argument('--work-dir', default='work_dirs/sweep',
                   help='parent of the runs\' work dirs (default: %(default)s)')
    mode = p.add_mutually_exclusive_group()
    mode.add_argument('--collect-only', action='store_true', help='only collect and tabulate')
    mode.add_argument('--print-commands', action='store_true',
                      help='print the shell commands of the runs, run nothing')
    p.add_argument('--force', action='store_true', help='rerun runs that have metrics')
    p.add_argument('--out', default=None,
                   help='Markdown file for the table (default: WORK_DIR/table.md)')
    p.add_argument('--train-args', default='', help='extra arguments for the train script')
    p.add_argument('--test-args', default='', help='extra arguments for the test script')
    p.add_argument('--train-script', default=osp.join(REPO, 'tools', 'train.py'),
                   help='training entry point (default: tools/train.py)')
    p.add_argument('--test-script', default=osp.join(REPO, 'tools', 'test.py'),
                   help='testing entry point (default: tools/test.py)')
    p.add_argument('--python', default=sys.executable, help='interpreter for the scripts')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    configs = [osp.abspath(c) for c in find_configs(args.configs)]
    if not configs:
        print('no configs found', file=sys.stderr)
        return 1
    work_dir = osp.abspath(args.work_dir)
    runs = [(c, osp.join(work_dir, osp.splitext(osp.basename(c))[0])) for c in configs]
    if args.print_commands:
        for config, run_dir in runs:
            print(shell_line(config, run_dir, args))
        return 0
    if not args.collect_only:
        for config, run_dir in runs:
            if not args.force and collect(run_dir)[0] == 'ok':
                print(f'[sweep] {osp.basename(run_dir)}: has metrics, skipped (--force reruns)')
                continue
            run_one(config, run_dir, args)
    rows = build_rows(configs, work_dir)
    table = make_table(rows)
    out = args.out or osp.join(work_dir, 'table.md')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        f.write(table)
    print(table + f'\n(written to {out})')
    # Running: exit 1 when a run did not produce metrics. Collecting is never an error.
    return int(not args.collect_only and any(r['status'] != 'ok' for r in rows))


if __name__ == '__main__':
    sys.exit(main())
