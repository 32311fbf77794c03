"""Run a set of configs and tabulate their COCO results like Table 2 of the Deformable
DETR paper (switch columns + AP, AP50, AP75, APs, APm, APl, training time, params, FPS)."""
import argparse
import collections
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from ddetr import config as ddetr_config
from ddetr.cli import entry_point
from ddetr.errors import ConfigError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

EPILOG = """\
modes:
  (default)          for each config, one after the other: train, test, measure params
                     and FPS (skipping runs that already have metrics, unless --force),
                     then write the table
  --print-commands   print one shell line per config (for a cluster), run nothing; with
                     --launcher slurm one `sbatch ... --wrap 'srun ...'` line per config
  --collect-only     run nothing, only collect results and write the table

each run lives in WORK_DIR/NAME, NAME being the config's file name without .py:
  train:  python tools/train.py CONFIG --work-dir WORK_DIR/NAME [--resume] [TRAIN_ARGS]
  test:   python tools/test.py CONFIG <WORK_DIR/NAME/last_checkpoint> --work-dir WORK_DIR/NAME
          [TEST_ARGS]                      (not with --skip-test: the last validation counts)
  params/FPS: python tools/analysis/model_complexity.py CONFIG --no-flops --shape H W
          --fps-iters N --out-json WORK_DIR/NAME/complexity.json  (not with --no-complexity;
          H W: the test pipeline's Resize scale; a failure here only empties the columns)
TRAIN_ARGS / TEST_ARGS may use {config}, {name} and {work_dir} (the run's folder).
The output of train and test is also written to WORK_DIR/NAME/sweep_train.log and
sweep_test.log.

resuming an interrupted sweep: run the same command again. Runs with metrics are skipped;
a run whose training finished (WORK_DIR/NAME/TRAINED) goes on with the test; a run killed
during training (WORK_DIR/NAME/last_checkpoint exists) trains on with `--resume` from its
last checkpoint. The printed cluster lines always pass --resume (a fresh run just starts)
and skip runs that already have metrics.json, so resubmitting them resumes as well.

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
  WORK_DIR/NAME/sweep_times.json  {"train_s": ..., "test_s": ...} wall times the sweep
                                  measured (summed over resumed parts, a killed part
                                  counted up to its last 30 s); "train time"
  WORK_DIR/NAME/complexity.json   params and FPS (tools/analysis/model_complexity.py)

a failed run shows as **failed** with its reason (the exit code and the last error line of
its log) under the table; the sweep goes on with the next run and exits 1 at the end.

switch columns, read from each config (mmengine Config, nothing is built):
  MS inputs     number of feature levels > 1 (model.num_feature_levels, or num_levels of
                the encoder attention, or neck.num_outs)
  MS attention  a model key named multi_scale_attention / ms_attention if one exists,
                else the same as MS inputs
  K             model.num_points, or num_points of the encoder attention (else any
                num_points in the model)
  FPNs          neck type: BiFPN / FPN-like type name / "w/o" (ChannelMapper or none)
  detector      shown only when the rows differ in it: the detector type, "+ refine"
                (with_box_refine), "+ two-stage" (as_two_stage) -- Table 1's rows
  a config may state or override any of them:
      sweep_row = dict(ms_inputs=True, ms_attention=True, num_points=4, fpn='w/o',
                       detector='DETR')

examples:
  python tools/sweep.py configs/quickstart/table2 --work-dir work_dirs/mini_table2
  python tools/sweep.py configs/table2 --work-dir work_dirs/table2
  python tools/sweep.py configs/table2 --work-dir work_dirs/table2 --print-commands
  python tools/sweep.py configs/table2 --work-dir work_dirs/table2 --print-commands \\
      --launcher slurm --partition gpu --gpus 8
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
            raise ConfigError(f'no config file or folder: {path}')
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


def read_detector(config: dict) -> str:
    """The detector variant of one config (a plain dict): its type without a registry
    scope, plus "+ refine" / "+ two-stage" for the Table 1 flags; ``sweep_row.detector``
    wins."""
    override = (config.get('sweep_row') or {}).get('detector')
    if override:
        return str(override)
    model = config.get('model') or {}
    name = str(model.get('type', '?')).split('.')[-1]
    if model.get('with_box_refine'):
        name += ' + refine'
    if model.get('as_two_stage'):
        name += ' + two-stage'
    return name


def fps_shape(config: dict) -> Optional[Tuple[int, int]]:
    """``(H, W)`` for the FPS measurement: the test pipeline's ``Resize`` scale (its short
    and long side), ``None`` when the config has none."""
    pipeline = _get(config, 'test_dataloader', 'dataset', 'pipeline') or []
    for step in pipeline:
        if isinstance(step, dict) and step.get('type') == 'Resize' and step.get('scale'):
            scale = step['scale']
            if isinstance(scale, int):
                return scale, scale
            return int(min(scale)), int(max(scale))
    return None


def load_config(path: str) -> dict:
    """The config as its runs read it (:func:`ddetr.config.load_config`), as a plain dict."""
    return ddetr_config.load_config(path).to_dict()


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


def finished(run_dir: str, skip_test: bool = False) -> bool:
    """Whether the sweep skips this run: it has metrics.json (from tools/test.py), or with
    ``skip_test`` its training finished (TRAINED) with a validation. A run interrupted
    mid-training is not finished, even though its validations so far give metrics."""
    if osp.isfile(osp.join(run_dir, 'FAILED')):
        return False
    if _bbox_metrics(_read_json(osp.join(run_dir, 'metrics.json'))):
        return True
    return skip_test and osp.isfile(osp.join(run_dir, 'TRAINED')) and \
        collect(run_dir)[0] == 'ok'


def collect_extras(run_dir: str) -> Dict[str, Optional[float]]:
    """Training time (s), parameters and FPS of one run folder, ``None`` where unknown."""
    times = _read_json(osp.join(run_dir, 'sweep_times.json')) or {}
    complexity = _read_json(osp.join(run_dir, 'complexity.json')) or {}
    params = complexity.get('params')
    params = params.get('all') if isinstance(params, dict) else params
    fps = complexity.get('fps')
    train_s = times.get('train_s')
    return dict(train_s=float(train_s) if isinstance(train_s, (int, float)) else None,
                params=float(params) if isinstance(params, (int, float)) else None,
                fps=float(fps) if isinstance(fps, (int, float)) else None)


# ----------------------------------------------------------------------------- table
def _tick(value: Optional[bool]) -> str:
    return '?' if value is None else ('✓' if value else '')


def _ap(value: Optional[float]) -> str:
    if value is None:
        return '–'
    return 'n/a' if value < 0 else f'{value * 100:.1f}'  # -1: no boxes of that size


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return '–'
    return f'{seconds / 60:.1f} min' if seconds < 5400 else f'{seconds / 3600:.1f} h'


def make_table(rows: List[dict]) -> str:
    """Markdown table; each row has ``name``, the switches, ``status``, ``metrics``,
    ``note`` and optionally ``detector``, ``train_s``, ``params``, ``fps``. Failed and
    missing runs show their status in the AP column and are explained under the table.
    The detector column is shown only when the rows differ in it."""
    with_detector = len({row.get('detector') for row in rows}) > 1
    header = (['config'] + (['detector'] if with_detector else []) +
              ['MS inputs', 'MS attention', 'K', 'FPNs'] + [m for m, _ in METRICS] +
              ['train time', 'params', 'FPS'])
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join([':--'] + [':-:'] * (len(header) - 1)) + '|']
    notes = []
    for row in rows:
        cells = [f"`{row['name']}`"] + ([row.get('detector') or '?'] if with_detector else [])
        cells += [_tick(row['ms_inputs']), _tick(row['ms_attention']),
                  '?' if row['num_points'] is None else str(row['num_points']),
                  row['fpn'] or '?']
        if row['status'] == 'ok':
            cells += [_ap(row['metrics'].get(key)) for _, key in METRICS]
        else:
            cells += [f"**{row['status']}**"] + ['–'] * (len(METRICS) - 1)
            notes.append(f"- `{row['name']}`: {row['status']} ({row['note']})")
        params, fps = row.get('params'), row.get('fps')
        cells += [_duration(row.get('train_s')),
                  '–' if params is None else f'{params / 1e6:.2f}M',
                  '–' if fps is None else f'{fps:.1f}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    if notes:
        lines += [''] + notes
    return '\n'.join(lines) + '\n'


def build_rows(configs: List[str], work_dir: str) -> List[dict]:
    rows = []
    for config in configs:
        name = osp.splitext(osp.basename(config))[0]
        try:
            loaded = load_config(config)
            switches, detector = read_switches(loaded), read_detector(loaded)
        except Exception as e:  # a broken config still gets its row
            print(f'warning: cannot read {config}: {e}', file=sys.stderr)
            switches = dict(ms_inputs=None, ms_attention=None, num_points=None, fpn=None)
            detector = None
        run_dir = osp.join(work_dir, name)
        status, metrics, note = collect(run_dir)
        rows.append(dict(name=name, detector=detector, **switches, status=status,
                         metrics=metrics, note=note, **collect_extras(run_dir)))
    return rows


# ------------------------------------------------------------------------------ runs
def commands(config: str, run_dir: str, args, resume: bool = False
             ) -> Tuple[List[str], List[str]]:
    """The train and test command lines of one run; the test's checkpoint is the
    placeholder ``{checkpoint}``. ``resume`` adds ``--resume`` (from the latest checkpoint
    in the run's folder) to the training."""
    fields = dict(config=config, name=osp.basename(run_dir), work_dir=run_dir)
    launcher = ['--launcher', args.launcher] if args.launcher != 'none' else []
    train = [args.python, args.train_script, config, '--work-dir', run_dir] + launcher
    train += [a.format(**fields) for a in shlex.split(args.train_args)]
    if resume:
        train.append('--resume')
    test = [args.python, args.test_script, config, '{checkpoint}', '--work-dir', run_dir]
    test += launcher + [a.format(**fields) for a in shlex.split(args.test_args)]
    return train, test


def complexity_command(config: str, run_dir: str, args) -> Optional[List[str]]:
    """The params/FPS command of one run, ``None`` with ``--no-complexity``."""
    if args.no_complexity:
        return None
    shape = args.fps_shape
    if shape is None:
        try:
            shape = fps_shape(load_config(config))
        except Exception:  # the row's own train/test report a broken config
            shape = None
    shape = shape or (800, 1333)
    device = 'cuda' if args.launcher == 'slurm' else 'cpu'
    return [args.python, args.complexity_script, config, '--no-flops',
            '--shape', str(shape[0]), str(shape[1]), '--fps-iters', str(args.fps_iters),
            '--device', device, '--out-json', osp.join(run_dir, 'complexity.json')]


def shell_line(config: str, run_dir: str, args) -> str:
    """One shell line for the run: skipped when it has metrics.json, else train (resuming
    from the latest checkpoint if there is one), test, params/FPS; FAILED on a failure.
    Under ``--launcher slurm`` the line submits that script with sbatch, train and test
    under srun."""
    train, test = commands(config, run_dir, args, resume=True)
    q = shlex.quote
    srun = ['srun'] if args.launcher == 'slurm' else []
    failed = q(osp.join(run_dir, 'FAILED'))
    test_line = ' '.join(q(a) for a in srun + test).replace(
        q('{checkpoint}'), f'"$(cat {q(osp.join(run_dir, "last_checkpoint"))})"')
    steps = [' '.join(q(a) for a in srun + train)]
    if not args.skip_test:
        steps.append(test_line)
    complexity = complexity_command(config, run_dir, args)
    if complexity:  # a failed measurement leaves the columns empty, not the run failed
        steps.append(f"{{ {' '.join(q(a) for a in complexity)} || true; }}")
    script = (f'mkdir -p {q(run_dir)} && rm -f {failed} && '
              f"{{ {' && '.join(steps)} || "
              f'echo "train or test exited with code $?" > {failed}; }}')
    if args.launcher != 'slurm':
        return script
    script = f'[ -f {q(osp.join(run_dir, "metrics.json"))} ] || {{ {script}; }}'
    sbatch = ['sbatch', f'--job-name={osp.basename(run_dir)}',
              f'--output={osp.join(run_dir, "slurm-%j.out")}', '--nodes=1',
              f'--ntasks={args.gpus}', f'--ntasks-per-node={args.gpus}',
              f'--gres=gpu:{args.gpus}', f'--cpus-per-task={args.cpus_per_task}']
    if args.partition:
        sbatch.append(f'--partition={args.partition}')
    sbatch += shlex.split(args.sbatch_args)
    return (f'mkdir -p {q(run_dir)} && ' + ' '.join(q(a) for a in sbatch) +
            f' --wrap {q(script)}')


ERROR_LINE = re.compile(r'^(\w+\.)*\w*(Error|Exception|Interrupt)\b|\berror:|^Killed')


def _run_logged(cmd: List[str], log_path: str, on_progress=None) -> Tuple[int, str]:
    """Run ``cmd`` from the repository root, its output echoed and written to
    ``log_path``; ``on_progress(seconds so far)`` is called at most every 30 s while it
    prints. Returns the exit code and the last error-looking line of the output (an
    exception, ``...: error: ...``), else its last line."""
    tail: collections.deque = collections.deque(maxlen=200)
    start = last_report = time.time()
    with open(log_path, 'a') as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors='replace')
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
                if line.strip():
                    tail.append(line.strip())
                if on_progress is not None and time.time() - last_report > 30:
                    last_report = time.time()
                    log.flush()
                    on_progress(last_report - start)
            code = proc.wait()
            if on_progress is not None:
                on_progress(time.time() - start)
        except BaseException:  # Ctrl-C: stop the child too, keep its checkpoints
            proc.kill()
            proc.wait()
            raise
    sys.stdout.flush()
    errors = [line for line in tail if ERROR_LINE.search(line)]
    return code, (errors or list(tail) or [''])[-1]


def _time_recorder(run_dir: str, key: str):
    """A callback that records ``seconds`` of this part on top of what earlier parts (a
    run resumed after a kill) took, in ``run_dir/sweep_times.json``."""
    path = osp.join(run_dir, 'sweep_times.json')
    before = float((_read_json(path) or {}).get(key) or 0.0)

    def record(seconds: float) -> None:
        times = _read_json(path) or {}
        times[key] = before + seconds
        with open(path + '.tmp', 'w') as f:
            json.dump(times, f, indent=2)
        os.replace(path + '.tmp', path)  # a kill never leaves half a file
    return record


def run_one(config: str, run_dir: str, args) -> None:
    """Train (or resume), test and measure one config; a failure leaves
    ``run_dir/FAILED`` with the reason."""
    os.makedirs(run_dir, exist_ok=True)
    for stale in ('FAILED', 'metrics.json'):
        if osp.exists(osp.join(run_dir, stale)):
            os.remove(osp.join(run_dir, stale))
    name = osp.basename(run_dir)
    trained = osp.join(run_dir, 'TRAINED')
    if args.force and osp.exists(trained):
        os.remove(trained)
    resume = osp.isfile(osp.join(run_dir, 'last_checkpoint')) and not args.force
    train, test = commands(config, run_dir, args, resume=resume)

    def fail(step: str, code: int, reason: str) -> None:
        message = f'{step} exited with code {code}' + (f': {reason}' if reason else '')
        print(f'[sweep] {name}: {message}', flush=True)
        with open(osp.join(run_dir, 'FAILED'), 'w') as f:
            f.write(message + '\n')

    if osp.isfile(trained):
        print(f'[sweep] {name}: training finished before, going on with the test', flush=True)
    else:
        if resume:
            print(f'[sweep] {name}: resuming the interrupted training', flush=True)
        print(f"[sweep] {' '.join(train)}", flush=True)
        code, reason = _run_logged(train, osp.join(run_dir, 'sweep_train.log'),
                                   _time_recorder(run_dir, 'train_s'))
        if code != 0:
            return fail('train', code, reason)
        open(trained, 'w').close()
    try:
        with open(osp.join(run_dir, 'last_checkpoint')) as f:
            checkpoint = f.read().strip()
    except OSError:
        return fail('train', 0, 'but wrote no last_checkpoint')
    if not args.skip_test:
        test = [checkpoint if a == '{checkpoint}' else a for a in test]
        print(f"[sweep] {' '.join(test)}", flush=True)
        code, reason = _run_logged(test, osp.join(run_dir, 'sweep_test.log'),
                                   _time_recorder(run_dir, 'test_s'))
        if code != 0:
            return fail('test', code, reason)
    complexity = complexity_command(config, run_dir, args)
    if complexity:
        print(f"[sweep] {' '.join(complexity)}", flush=True)
        code, reason = _run_logged(complexity, osp.join(run_dir, 'sweep_complexity.log'))
        if code != 0:  # the row keeps its metrics; only params/FPS stay empty
            print(f'[sweep] {name}: params/FPS not measured ({reason})', flush=True)


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
    p.add_argument('--force', action='store_true',
                   help='rerun runs that have metrics, from scratch (no resuming)')
    p.add_argument('--out', default=None,
                   help='Markdown file for the table (default: WORK_DIR/table.md)')
    p.add_argument('--train-args', default='', help='extra arguments for the train script')
    p.add_argument('--test-args', default='', help='extra arguments for the test script')
    p.add_argument('--skip-test', action='store_true',
                   help='no test run: the validation at the end of training gives the metrics')
    p.add_argument('--no-complexity', action='store_true',
                   help='do not measure params and FPS')
    p.add_argument('--fps-iters', type=int, default=10,
                   help='timed inference runs of the FPS measurement (default: %(default)s)')
    p.add_argument('--fps-shape', type=int, nargs=2, default=None, metavar=('H', 'W'),
                   help='image size of the FPS measurement (default: the test pipeline\'s '
                   'Resize scale, else 800 1333)')
    p.add_argument('--launcher', choices=['none', 'slurm'], default='none',
                   help='slurm: --print-commands prints sbatch lines running train and '
                   'test under srun with --launcher slurm')
    p.add_argument('--partition', default=None, help='slurm partition (sbatch --partition)')
    p.add_argument('--gpus', type=int, default=8,
                   help='slurm: GPUs = tasks of one run, one node (default: %(default)s)')
    p.add_argument('--cpus-per-task', type=int, default=5,
                   help='slurm: CPUs per task (default: %(default)s)')
    p.add_argument('--sbatch-args', default='',
                   help='extra sbatch arguments, e.g. --sbatch-args="--time=2-0 --qos=high"')
    p.add_argument('--train-script', default=osp.join(REPO, 'tools', 'train.py'),
                   help='training entry point (default: tools/train.py)')
    p.add_argument('--test-script', default=osp.join(REPO, 'tools', 'test.py'),
                   help='testing entry point (default: tools/test.py)')
    p.add_argument('--complexity-script',
                   default=osp.join(REPO, 'tools', 'analysis', 'model_complexity.py'),
                   help='params/FPS entry point (default: tools/analysis/model_complexity.py)')
    p.add_argument('--python', default=sys.executable, help='interpreter for the scripts')
    args = p.parse_args(argv)
    if args.launcher == 'slurm' and not args.print_commands:
        p.error('--launcher slurm only prints the sbatch lines: add --print-commands '
                '(the sequential runner runs here, without slurm)')
    if args.gpus < 1 or args.cpus_per_task < 1 or args.fps_iters < 0:
        p.error('--gpus and --cpus-per-task must be >= 1, --fps-iters >= 0')
    return args


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    configs = [osp.abspath(c) for c in find_configs(args.configs)]
    if not configs:
        raise ConfigError(f'no configs (*.py not starting with _) in {" ".join(args.configs)}')
    work_dir = osp.abspath(args.work_dir)
    runs = [(c, osp.join(work_dir, osp.splitext(osp.basename(c))[0])) for c in configs]
    if args.print_commands:
        for config, run_dir in runs:
            print(shell_line(config, run_dir, args))
        return 0
    if not args.collect_only:
        for i, (config, run_dir) in enumerate(runs):
            if not args.force and finished(run_dir, args.skip_test):
                print(f'[sweep] {osp.basename(run_dir)}: has metrics, skipped (--force reruns)')
                continue
            print(f'[sweep] run {i + 1}/{len(runs)}: {osp.basename(run_dir)}', flush=True)
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
