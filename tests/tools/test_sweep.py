"""tools/sweep.py on tiny fake configs and fake result files; no model is built."""
import importlib.util
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
import textwrap

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_spec = importlib.util.spec_from_file_location('sweep', osp.join(REPO, 'tools', 'sweep.py'))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

METRICS = {'coco/bbox_mAP': 0.4381, 'coco/bbox_mAP_50': 0.627, 'coco/bbox_mAP_75': 0.477,
           'coco/bbox_mAP_s': 0.261, 'coco/bbox_mAP_m': 0.474, 'coco/bbox_mAP_l': 0.594}


def _model(levels=4, points=4, neck='ChannelMapper', extra=''):
    return textwrap.dedent(f"""\
        model = dict(
            type='DeformableDETR', num_feature_levels={levels}, {extra}
            neck=dict(type='{neck}', num_outs={levels}),
            encoder=dict(num_layers=6, layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=256, num_levels={levels},
                                   num_points={points}))))
        """)


@pytest.fixture
def table2(tmp_path):
    """Configs for six rows and the result files of five runs."""
    cfg = tmp_path / 'configs'
    (cfg / '_base_').mkdir(parents=True)
    (cfg / '_base_' / 'base.py').write_text(_model())
    (cfg / 'a_single_scale.py').write_text(_model(levels=1))
    (cfg / 'b_ms_inputs_only.py').write_text(_model(extra='ms_attention=False,'))
    (cfg / 'c_k1.py').write_text("_base_ = ['./_base_/base.py']\n"
                                 "model = dict(encoder=dict(layer_cfg=dict("
                                 "self_attn_cfg=dict(num_points=1))))\n")
    (cfg / 'd_fpn.py').write_text(_model(neck='FPN'))
    (cfg / 'e_bifpn.py').write_text(_model() + "sweep_row = dict(fpn='BiFPN')\n")
    (cfg / 'f_never_run.py').write_text(_model())
    (cfg / 'notes.txt').write_text('not a config')

    work = tmp_path / 'work'
    (work / 'a_single_scale').mkdir(parents=True)
    (work / 'a_single_scale' / 'metrics.json').write_text(json.dumps(  # as tools/test.py
        dict(config='a_single_scale.py', checkpoint='epoch_1.pth', metrics=METRICS)))
    stamp = work / 'b_ms_inputs_only' / '20240101_000000'
    stamp.mkdir(parents=True)  # a test run's mmengine log (keys without prefix also work)
    (stamp / '20240101_000000.json').write_text(json.dumps(
        {k.replace('coco/', ''): v for k, v in METRICS.items()}))
    older = work / 'c_k1' / '20240101_000000' / 'vis_data'
    newer = work / 'c_k1' / '20240102_000000' / 'vis_data'
    older.mkdir(parents=True)
    newer.mkdir(parents=True)
    (older / 'scalars.json').write_text(json.dumps(dict(METRICS, step=1)) + '\n')
    (newer / 'scalars.json').write_text(
        json.dumps({'loss': 3.0, 'step': 10}) + '\n' +
        json.dumps(dict(METRICS, **{'coco/bbox_mAP': 0.2}, step=1)) + '\n' +
        json.dumps(dict(METRICS, **{'coco/bbox_mAP': 0.3}, step=2)) + '\n' +
        json.dumps({'loss': 2.0, 'step': 20}) + '\n')
    (work / 'd_fpn').mkdir()
    (work / 'd_fpn' / 'FAILED').write_text('train exited with code 1\n')
    (work / 'e_bifpn').mkdir()  # started, no metrics yet
    return cfg, work


def _row(table, name):
    line = next(line for line in table.splitlines() if line.startswith(f'| `{name}`'))
    return [c.strip() for c in line.strip('|').split('|')]


def test_table_from_fake_results(table2):
    cfg, work = table2
    configs = sweep.find_configs([str(cfg)])
    assert [osp.basename(c) for c in configs] == [
        'a_single_scale.py', 'b_ms_inputs_only.py', 'c_k1.py', 'd_fpn.py', 'e_bifpn.py',
        'f_never_run.py']
    table = sweep.make_table(sweep.build_rows(configs, str(work)))
    lines = table.splitlines()
    assert lines[0] == ('| config | MS inputs | MS attention | K | FPNs | '
                        'AP | AP50 | AP75 | APs | APm | APl | train time | params | FPS |')
    assert _row(table, 'a_single_scale') == [
        '`a_single_scale`', '', '', '4', 'w/o', '43.8', '62.7', '47.7', '26.1', '47.4', '59.4',
        '–', '–', '–']
    assert _row(table, 'b_ms_inputs_only')[1:6] == ['✓', '', '4', 'w/o', '43.8']
    assert _row(table, 'c_k1')[1:6] == ['✓', '✓', '1', 'w/o', '30.0']  # newest validation
    assert _row(table, 'd_fpn')[1:] == ['✓', '✓', '4', 'FPN', '**failed**'] + ['–'] * 8
    assert _row(table, 'e_bifpn')[4:6] == ['BiFPN', '**missing**']
    assert _row(table, 'f_never_run')[5] == '**missing**'
    assert '- `d_fpn`: failed (train exited with code 1)' in lines
    assert '- `f_never_run`: missing (no work dir)' in lines
    assert '- `e_bifpn`: missing (no metrics in the work dir)' in lines


def test_switches_fallbacks_and_override():
    assert sweep.read_switches({}) == dict(ms_inputs=None, ms_attention=None,
                                           num_points=None, fpn='w/o')
    config = dict(model=dict(neck=[dict(type='mmdet.FPN', num_outs=4)],
                             decoder=dict(attn=dict(num_points=8))))
    assert sweep.read_switches(config) == dict(ms_inputs=True, ms_attention=True,
                                               num_points=8, fpn='FPN')
    # Variant flags on the detector win over what a base config put in the layers.
    config['model'].update(num_points=2, num_feature_levels=1, multi_scale_attention=False,
                           encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_points=4,
                                                                          num_levels=4))))
    assert sweep.read_switches(config) == dict(ms_inputs=False, ms_attention=False,
                                               num_points=2, fpn='FPN')
    del config['model']['num_feature_levels'], config['model']['multi_scale_attention']
    config['sweep_row'] = dict(ms_attention=False, fpn='w/o', num_points=8, unrelated=1)
    assert sweep.read_switches(config) == dict(ms_inputs=True, ms_attention=False,
                                               num_points=8, fpn='w/o')


def test_collect_only_cli_writes_the_table(table2, tmp_path):
    cfg, work = table2
    out = tmp_path / 'table.md'
    code = sweep.main([str(cfg / 'a_single_scale.py'), str(cfg / 'd_fpn.py'),
                       '--work-dir', str(work), '--collect-only', '--out', str(out)])
    assert code == 0
    text = out.read_text()
    assert '`a_single_scale`' in text and '**failed**' in text and 'f_never_run' not in text


def test_print_commands(table2, capsys):
    cfg, work = table2
    assert sweep.main([str(cfg / 'c_k1.py'), '--work-dir', str(work), '--print-commands',
                       '--train-args', '--amp --cfg-options tag={name}']) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    run_dir = str(work / 'c_k1')
    assert f"tools/train.py {cfg / 'c_k1.py'} --work-dir {run_dir} --amp --cfg-options " \
           'tag=c_k1' in line
    assert f'"$(cat {run_dir}/last_checkpoint)" --work-dir {run_dir}' in line
    assert f'> {run_dir}/FAILED' in line


FAKE_TRAIN = """\
import os, sys
config, work_dir = sys.argv[1], sys.argv[sys.argv.index('--work-dir') + 1]
if 'broken' in open(config).read():
    sys.exit(3)
os.makedirs(work_dir, exist_ok=True)
open(os.path.join(work_dir, 'epoch_1.pth'), 'w').close()
with open(os.path.join(work_dir, 'last_checkpoint'), 'w') as f:
    f.write(os.path.join(work_dir, 'epoch_1.pth'))
"""
FAKE_TEST = """\
import json, os, sys
checkpoint, work_dir = sys.argv[2], sys.argv[sys.argv.index('--work-dir') + 1]
assert os.path.isfile(checkpoint), checkpoint
with open(os.path.join(work_dir, 'metrics.json'), 'w') as f:
    json.dump({'metrics': {'coco/bbox_mAP': 0.5, 'coco/bbox_mAP_50': 0.7}}, f)
"""


def test_sequential_run_with_fake_scripts(tmp_path):
    cfg = tmp_path / 'configs'
    cfg.mkdir()
    (cfg / 'good.py').write_text(_model())
    (cfg / 'bad.py').write_text(_model() + "note = 'broken'\n")
    (tmp_path / 'train.py').write_text(FAKE_TRAIN)
    (tmp_path / 'test.py').write_text(FAKE_TEST)
    work = tmp_path / 'work'
    argv = [str(cfg), '--work-dir', str(work), '--train-script', str(tmp_path / 'train.py'),
            '--test-script', str(tmp_path / 'test.py'), '--no-complexity']
    assert sweep.main(argv) == 1  # one run failed
    table = (work / 'table.md').read_text()
    assert _row(table, 'good')[5:8] == ['50.0', '70.0', '–']
    assert _row(table, 'bad')[5] == '**failed**'
    assert (work / 'bad' / 'FAILED').read_text() == 'train exited with code 3\n'

    (cfg / 'bad.py').write_text(_model())  # fixed: a rerun clears FAILED, skips good
    (work / 'good' / 'last_checkpoint').unlink()
    assert sweep.main(argv) == 0
    assert not (work / 'bad' / 'FAILED').exists()
    assert not (work / 'good' / 'last_checkpoint').exists()  # not rerun
    assert _row((work / 'table.md').read_text(), 'bad')[5] == '50.0'


def test_help_documents_the_contract():
    out = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'sweep.py'), '--help'],
                         capture_output=True, text=True, check=True).stdout
    for phrase in ('metrics.json', 'FAILED', 'scalars.json', 'sweep_row', '--print-commands'):
        assert phrase in out


def test_printed_commands_run_in_bash(tmp_path, capsys):
    """The cluster lines do what the sequential runner does, FAILED marker included."""
    cfg = tmp_path / 'configs'
    cfg.mkdir()
    (cfg / 'good.py').write_text(_model())
    (cfg / 'bad.py').write_text(_model() + "note = 'broken'\n")
    (tmp_path / 'train.py').write_text(FAKE_TRAIN)
    (tmp_path / 'test.py').write_text(FAKE_TEST)
    work = tmp_path / 'work'
    argv = [str(cfg), '--work-dir', str(work), '--train-script', str(tmp_path / 'train.py'),
            '--test-script', str(tmp_path / 'test.py'), '--no-complexity']
    assert sweep.main(argv + ['--print-commands']) == 0
    for line in capsys.readouterr().out.strip().splitlines():
        subprocess.run(['bash', '-c', line], check=True)
    assert (work / 'bad' / 'FAILED').read_text() == 'train or test exited with code 3\n'
    rows = {r['name']: r for r in sweep.build_rows(sweep.find_configs([str(cfg)]), str(work))}
    assert rows['good']['status'] == 'ok' and rows['good']['metrics']['bbox_mAP'] == 0.5
    assert rows['bad']['status'] == 'failed'


# A train script that logs its calls; for a config containing 'interrupt' its first call
# saves a checkpoint and a validation at 50%, then kills the sweep and itself (a machine
# going down mid-run); for 'raises' it fails with a traceback.
LOGGING_TRAIN = """\
import json, os, signal, sys
config, work_dir = sys.argv[1], sys.argv[sys.argv.index('--work-dir') + 1]
with open(os.environ['CALLS'], 'a') as f:
    f.write(os.path.basename(config) + ' ' + ' '.join(sys.argv[2:]) + '\\n')
text = open(config).read()
if 'raises' in text:
    print('Traceback (most recent call last):')
    print("ValueError: model.num_points: 0 is not >= 1")
    print('more output after the error')
    sys.exit(1)
os.makedirs(work_dir, exist_ok=True)
def save(it):
    with open(os.path.join(work_dir, f'iter_{it}.pth'), 'w') as f:
        f.write('')
    with open(os.path.join(work_dir, 'last_checkpoint'), 'w') as f:
        f.write(os.path.join(work_dir, f'iter_{it}.pth'))
marker = os.path.join(work_dir, 'interrupted_once')
if 'interrupt' in text and not os.path.exists(marker):
    save(5)
    vis = os.path.join(work_dir, '20240101_000000', 'vis_data')
    os.makedirs(vis)
    with open(os.path.join(vis, 'scalars.json'), 'w') as f:
        f.write(json.dumps({'coco/bbox_mAP': 0.1, 'step': 5}) + '\\n')
    open(marker, 'w').close()
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
assert '--resume' not in sys.argv or os.path.exists(marker), 'resumed a fresh run'
save(10)
"""


def test_sweep_resumes_after_an_interruption(tmp_path):
    cfg = tmp_path / 'configs'
    cfg.mkdir()
    (cfg / 'a_done.py').write_text(_model())
    (cfg / 'b_killed.py').write_text(_model() + "note = 'interrupt'\n")
    (cfg / 'c_raises.py').write_text(_model() + "note = 'raises'\n")
    (cfg / 'd_after.py').write_text(_model())
    (tmp_path / 'train.py').write_text(LOGGING_TRAIN)
    (tmp_path / 'test.py').write_text(FAKE_TEST)
    work, calls = tmp_path / 'work', tmp_path / 'calls.txt'
    cmd = [sys.executable, osp.join(REPO, 'tools', 'sweep.py'), str(cfg),
           '--work-dir', str(work), '--train-script', str(tmp_path / 'train.py'),
           '--test-script', str(tmp_path / 'test.py'), '--no-complexity']
    env = dict(os.environ, CALLS=str(calls))
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == -9  # the sweep was killed while b trained
    assert (work / 'a_done' / 'metrics.json').is_file()
    assert not (work / 'b_killed' / 'TRAINED').exists()
    assert not (work / 'd_after').exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1, second.stdout + second.stderr  # c_raises failed
    lines = calls.read_text().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == ['a_done.py', 'b_killed.py', 'b_killed.py', 'c_raises.py', 'd_after.py']
    assert '--resume' not in lines[0] and '--resume' not in lines[1]
    assert lines[2].endswith('--resume')  # the killed run goes on from its checkpoint
    assert 'a_done: has metrics, skipped' in second.stdout
    table = (work / 'table.md').read_text()
    assert _row(table, 'a_done')[5] == '50.0' and _row(table, 'b_killed')[5] == '50.0'
    assert _row(table, 'd_after')[5] == '50.0'  # the sweep went on after the failure
    assert _row(table, 'c_raises')[5] == '**failed**'
    reason = 'train exited with code 1: ValueError: model.num_points: 0 is not >= 1'
    assert f'- `c_raises`: failed ({reason})' in table
    assert (work / 'c_raises' / 'sweep_train.log').read_text().startswith('Traceback')
    times = json.loads((work / 'b_killed' / 'sweep_times.json').read_text())
    assert times['train_s'] > 0  # the resumed part's time (the killed part was not saved)

    # a third call: everything with metrics is skipped, only the failed run is retried
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 1
    assert [line.split()[0] for line in calls.read_text().splitlines()][5:] == ['c_raises.py']


def test_trained_run_goes_on_with_the_test(tmp_path):
    """Training finished (TRAINED) but the test did not: no second training."""
    cfg = tmp_path / 'configs'
    cfg.mkdir()
    (cfg / 'a.py').write_text(_model())
    (tmp_path / 'train.py').write_text('raise SystemExit("must not train again")\n')
    (tmp_path / 'test.py').write_text(FAKE_TEST)
    run_dir = tmp_path / 'work' / 'a'
    run_dir.mkdir(parents=True)
    (run_dir / 'iter_10.pth').write_text('')
    (run_dir / 'last_checkpoint').write_text(str(run_dir / 'iter_10.pth'))
    (run_dir / 'TRAINED').write_text('')
    assert sweep.main([str(cfg), '--work-dir', str(tmp_path / 'work'), '--no-complexity',
                       '--train-script', str(tmp_path / 'train.py'),
                       '--test-script', str(tmp_path / 'test.py')]) == 0
    assert sweep.collect(str(run_dir))[:2] == ('ok', {'bbox_mAP': 0.5, 'bbox_mAP_50': 0.7})


def test_print_commands_for_slurm(table2, capsys):
    cfg, work = table2
    assert sweep.main([str(cfg / 'c_k1.py'), str(cfg / 'd_fpn.py'), '--work-dir', str(work),
                       '--print-commands', '--launcher', 'slurm', '--partition', 'gpu',
                       '--gpus', '4', '--sbatch-args=--time=1-0']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    run_dir = str(work / 'c_k1')
    prefix, wrapped = lines[0].split(' --wrap ')
    assert prefix == (f'mkdir -p {run_dir} && sbatch --job-name=c_k1 '
                      f'--output={run_dir}/slurm-%j.out --nodes=1 --ntasks=4 '
                      '--ntasks-per-node=4 --gres=gpu:4 --cpus-per-task=5 --partition=gpu '
                      '--time=1-0')
    (script,) = shlex.split(wrapped)  # one quoted batch script
    assert script.startswith(f'[ -f {run_dir}/metrics.json ] || ')
    assert f"srun {sys.executable} {REPO}/tools/train.py {cfg / 'c_k1.py'} --work-dir " \
           f'{run_dir} --launcher slurm --resume' in script
    assert f'srun {sys.executable} {REPO}/tools/test.py {cfg / "c_k1.py"} ' \
           f'"$(cat {run_dir}/last_checkpoint)" --work-dir {run_dir} --launcher slurm' in script
    assert '--device cuda' in script and f'> {run_dir}/FAILED' in script
    assert '--job-name=d_fpn' in lines[1]
    # bash parses the batch script (syntax only, nothing runs)
    subprocess.run(['bash', '-n', '-c', script], check=True)


def test_slurm_launcher_needs_print_commands(table2):
    cfg, work = table2
    with pytest.raises(SystemExit):
        sweep.main([str(cfg), '--work-dir', str(work), '--launcher', 'slurm'])


def test_detector_column_for_table1_rows(tmp_path):
    rows = [dict(name=n, detector=d, ms_inputs=True, ms_attention=True, num_points=4,
                 fpn='w/o', status='missing', metrics=None, note='no work dir')
            for n, d in (('plain', 'DeformableDETR'), ('two', 'DeformableDETR + two-stage'))]
    rows[0].update(status='ok', metrics={'bbox_mAP': 0.25}, train_s=600.0, params=2.5e6,
                   fps=12.34)
    table = sweep.make_table(rows)
    assert table.splitlines()[0].startswith('| config | detector | MS inputs |')
    assert _row(table, 'plain')[1] == 'DeformableDETR'
    assert _row(table, 'plain')[-3:] == ['10.0 min', '2.50M', '12.3']
    assert _row(table, 'two')[1] == 'DeformableDETR + two-stage'
    assert sweep.read_detector(dict(model=dict(type='mmdet.DETR'))) == 'DETR'
    assert sweep.read_detector(dict(model=dict(type='DeformableDETR', with_box_refine=True,
                                               as_two_stage=True))) == \
        'DeformableDETR + refine + two-stage'
