"""Validation AP (or training losses) against training iterations for several runs in
one figure, labelled by config name: Figure 3 of the Deformable DETR paper (convergence
curves) in miniature.

    python tools/analysis/plot_curves.py work_dirs/mini_table1/ddetr_tiny \\
        work_dirs/mini_table1/ddetr_tiny_refine_twostage work_dirs/mini_detr/detr_tiny \\
        --metric coco/bbox_mAP --out curves.png
    python tools/analysis/plot_curves.py RUN_DIR... --keys loss loss_cls --out losses.png
    python tools/analysis/plot_curves.py RUN_DIR... --x epoch --out curves_by_epoch.png

RUN_DIR is an mmengine work dir (tools/train.py --work-dir): every run of it
(<timestamp>/vis_data/scalars.json, one per start, so a resumed run's parts are joined;
a later part wins at the same iteration) is read. A validation record counts at the
training iteration logged just before it (mmengine logs the metrics of iteration-based
runs at "step" 0 unless log_metric_by_epoch=False, then at the iteration). `--x epoch`
plots against the epoch where the run logs one (epoch-based runs). The label is the name
of the config the run dumped into its work dir (else the folder's name); --labels
overrides it.
"""
import argparse
import glob
import json
import os.path as osp
import sys
from typing import Dict, List, Optional, Tuple

from ddetr.cli import entry_point
from ddetr.errors import ConfigError, DataError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot validation metrics or training losses of several runs against '
                    'the training iteration.', epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run_dirs', nargs='+', metavar='RUN_DIR', help='work dirs of runs')
    what = parser.add_mutually_exclusive_group()
    what.add_argument('--metric', default=None,
                      help='validation metric (default: coco/bbox_mAP)')
    what.add_argument('--keys', nargs='+', default=None, metavar='KEY',
                      help='training log keys instead, e.g. loss loss_cls')
    parser.add_argument('--x', choices=['iter', 'epoch'], default='iter',
                        help='x axis (default: %(default)s)')
    parser.add_argument('--labels', nargs='+', default=None,
                        help='one legend label per RUN_DIR (default: the config names)')
    parser.add_argument('--title', default=None, help='figure title')
    parser.add_argument('--out', default='curves.png', help='image file (default: %(default)s)')
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.run_dirs):
        parser.error(f'--labels: {len(args.labels)} labels for {len(args.run_dirs)} runs')
    return args


def scalar_files(run_dir: str) -> List[str]:
    """The run's scalars.json files, oldest first (mmengine's timestamps sort by time)."""
    if not osp.isdir(run_dir):
        raise DataError(f'{run_dir}: no such run folder')
    files = sorted(glob.glob(osp.join(run_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise DataError(f'{run_dir}: no <timestamp>/vis_data/scalars.json (is it a '
                                f'work dir of tools/train.py?)')
    return files


def read_run(run_dir: str) -> Tuple[Dict[int, dict], Dict[int, dict]]:
    """``(train, val)`` records of a run keyed by training iteration; each record also has
    ``epoch`` where the log has one."""
    train: Dict[int, dict] = {}
    val: Dict[int, dict] = {}
    for path in scalar_files(run_dir):
        last_iter, last_epoch = 0, None
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    print(f'warning: {path}:{number}: not JSON, skipped', file=sys.stderr)
                    continue
                if 'iter' in record:  # a training record
                    last_iter = int(record['iter'])
                    last_epoch = record.get('epoch', last_epoch)
                    train[last_iter] = record
                else:  # a validation record: at the iteration trained so far
                    step = int(record.get('step', 0))
                    at = last_iter if last_iter else step
                    val[at] = dict(record, epoch=record.get('epoch', last_epoch))
    return train, val


def run_label(run_dir: str) -> str:
    """The config name the run dumped into its work dir, else the folder name."""
    dumped = [osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(run_dir, '*.py'))]
    return dumped[0] if len(dumped) == 1 else osp.basename(osp.normpath(run_dir))


def series(records: Dict[int, dict], key: str, x: str) -> Tuple[List[float], List[float]]:
    points = []
    for it in sorted(records):
        record = records[it]
        if key not in record or not isinstance(record[key], (int, float)):
            continue
        if x == 'epoch':
            if record.get('epoch') is None:
                return [], []
            points.append((float(record['epoch']), float(record[key])))
        else:
            points.append((float(it), float(record[key])))
    return [p[0] for p in points], [p[1] for p in points]


def available(records: Dict[int, dict]) -> List[str]:
    keys = set()
    for record in records.values():
        keys.update(k for k, v in record.items() if isinstance(v, (int, float)))
    return sorted(keys - {'step', 'iter', 'epoch'})


def plot(run_dirs: List[str], out: str, metric: Optional[str] = None,
         keys: Optional[List[str]] = None, x: str = 'iter',
         labels: Optional[List[str]] = None, title: Optional[str] = None
         ) -> Dict[str, Tuple[List[float], List[float]]]:
    """Draw the figure into ``out``; returns the curves drawn, ``{legend label: (xs,
    ys)}`` (ys as in the log, not x100). A run without the metric/key raises ``KeyError``
    naming it and the ones the run has."""
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    validation = not keys  # a validation metric, else training log keys
    keys = [metric or 'coco/bbox_mAP'] if validation else list(keys)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn: Dict[str, Tuple[List[float], List[float]]] = {}
    for i, run_dir in enumerate(run_dirs):
        train, val = read_run(run_dir)
        records, kind = (val, 'validation') if validation else (train, 'training')
        label = labels[i] if labels else run_label(run_dir)
        for key in keys:
            xs, ys = series(records, key, x)
            if not xs:
                if x == 'epoch' and any(key in r for r in records.values()):
                    raise ConfigError(f'{run_dir}: the {kind} records of this run have no epoch '
                                   f'(an iteration-based run): use --x iter')
                raise ConfigError(f'{run_dir}: no {kind} metric "{key}"; the {kind} records '
                               f'have: {", ".join(available(records)) or "nothing"}')
            scale = 100.0 if validation and 'mAP' in key else 1.0  # AP in percent
            name = label if len(keys) == 1 else f'{label}: {key}'
            drawn[name] = (xs, ys)
            ax.plot(xs, [y * scale for y in ys], marker='o' if validation else None,
                    markersize=4, label=name)
    ax.set_xlabel('training iterations' if x == 'iter' else 'training epochs')
    ylabel = keys[0] if len(keys) == 1 else 'value'
    if validation and 'mAP' in keys[0]:
        ylabel = f'{keys[0]} (x100)'
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return drawn


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    drawn = plot(args.run_dirs, args.out, metric=args.metric, keys=args.keys, x=args.x,
                 labels=args.labels, title=args.title)
    for name, (xs, ys) in drawn.items():
        print(f'{name}: {len(xs)} points, last {ys[-1]:.4g} at {xs[-1]:g}')
    print(f'written to {args.out}')
    return 0


if __name__ == '__main__':
    main()
