"""The analysis tools, on a shrunken quick-start model (random weights) and small generated
images: model_complexity (the op's FLOPs, parameter counts), vis_sampling_points (what is
captured, pixel conversion, the picture), benchmark_model (a smoke run against mmdet) and
the mmdet equivalent it builds, benchmark_op's floor, benchmark_dropout and profile_step.
(The demo's tests: tests/tools/test_demo.py.)"""
import json
import os.path as osp
import re
import sys

import cv2
import pytest
import torch
from mmengine.config import Config

from ddetr.apis import build_detector, init_detector
from ddetr.config import load_config
from ddetr.errors import ConversionError
from ddetr.ops import HAS_COMPILED_OP, HAS_COUNTER_DROPOUT, extension

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
import amp_geometry_error  # noqa: E402
import benchmark_dropout  # noqa: E402
import benchmark_model  # noqa: E402
import benchmark_op  # noqa: E402
import model_complexity  # noqa: E402
import profile_step  # noqa: E402
import vis_sampling_points as vis  # noqa: E402

from ddetr.converters.mmdet_equivalent import mmdet_model_cfg  # noqa: E402

from test_train_test import write_config  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')


# ------------------------------------------------------------------ model_complexity
def level_shapes(model, shape):
    with torch.no_grad():
        feats = model.extract_feat(torch.zeros(1, 3, *shape))
    return [tuple(f.shape[-2:]) for f in feats]


@pytest.mark.parametrize('backend', ['compiled', 'fallback'])
def test_complexity_counts_the_deformable_attention_op(tiny_config, backend, monkeypatch):
    """FLOPs with the op counted minus without = 5 * nq * M * L * K * D per call, summed
    over the encoder (every pixel a query) and decoder (object queries) layers; the
    grid_sample fallback is counted the same."""
    if backend == 'compiled' and not HAS_COMPILED_OP:
        pytest.skip('ddetr._C not built')
    if backend == 'fallback':
        monkeypatch.setattr(extension, 'has_kernel', lambda device: False)
        monkeypatch.setattr(extension, '_warned', True)
    cfg = load_config(tiny_config)
    model = build_detector(cfg).eval()
    shape = (96, 128)
    num_keys = sum(h * w for h, w in level_shapes(model, shape))
    layer = cfg.model.encoder.layer_cfg
    num_heads, head_dims = layer.num_heads, layer.embed_dims // layer.num_heads
    per_query = 5 * num_heads * 4 * 4 * head_dims  # 4 levels, 4 points
    analytic = per_query * (1 * num_keys + 1 * cfg.model.num_queries)  # 1 + 1 layers

    counted = model_complexity.count_flops(model, shape)
    ignored = model_complexity.count_flops(model, shape, count_deform_attn=False)
    assert counted['deform_attn'] == analytic
    assert ignored['deform_attn'] == 0
    assert counted['total'] - ignored['total'] == analytic
    # the rest is there too: convolutions, linears, and the decoder self-attention
    assert counted['by_operator']['conv'] > 0 and counted['by_operator']['linear'] > 0
    assert counted['by_operator']['scaled_dot_product_attention'] == (
        2 * cfg.model.num_queries ** 2 * layer.embed_dims)


def test_complexity_parameter_counts(tiny_config):
    model = build_detector(load_config(tiny_config))
    counts = model_complexity.count_parameters(model)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert counts['all'] == sum(unique.values())
    bn = sum(p.numel() for m in model.backbone.modules()
             if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert bn > 0 and counts['original'] == counts['all'] - bn
    assert counts['trainable'] == counts['all']  # the quick start trains everything
    # shared tensors once: the base variant shares one head across decoder layers
    base = build_detector(load_config(tiny_config, ['model.with_box_refine=False',
                                                    'model.as_two_stage=False',
                                                    'model.decoder.num_layers=2']))
    with_duplicates = sum(p.numel() for _, p in base.named_parameters(remove_duplicate=False))
    assert model_complexity.count_parameters(base)['all'] < with_duplicates


def test_complexity_matches_the_original_release_convention():
    """The reference counts of shared/reference/official-checkpoint.md (91 classes)."""
    expected = {'ddetr_r50.py': 40_069_665, 'ddetr_r50_refine.py': 40_849_660,
                'ddetr_r50_refine_twostage.py': 41_181_529}
    for name, count in expected.items():
        model = build_detector(load_config(osp.join(ROOT, 'configs', name), num_classes=91))
        counts = model_complexity.count_parameters(model)
        assert counts['original'] == count, name
        assert counts['all'] == count + 53_120  # ResNet-50's BN affine weights
        assert counts['trainable'] < counts['original']  # frozen stem, stage 1 and BN


def test_complexity_cli(tiny_config, capsys, one_line_exit):
    assert model_complexity.main([tiny_config, '--shape', '96', '128', '--fps-iters', '1']) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if re.match(r'\| [\d,]+ \|', line)]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip('|').split('|')]
    assert int(cells[0].replace(',', '')) == model_complexity.count_parameters(
        build_detector(load_config(tiny_config)))['all']
    assert cells[3].endswith(('M', 'G')) and float(cells[5]) > 0  # FLOPs, FPS
    assert '5 FLOPs per (query, head, level, point, channel)' in out
    with pytest.raises(SystemExit):
        model_complexity.parse_args(['--help'])
    assert 'multiply-add is ONE FLOP' in capsys.readouterr().out
    assert 'config missing.py does not exist' in one_line_exit(model_complexity.main,
                                                                   ['missing.py'])


def test_complexity_json_without_flops(tmp_path, capsys):
    """What tools/sweep.py runs for its params/FPS columns, also on mmdet's DETR."""
    config = osp.join(ROOT, 'configs', 'quickstart', 'detr', 'detr_tiny.py')
    out = tmp_path / 'complexity.json'
    assert model_complexity.main([config, '--no-flops', '--shape', '64', '96',
                                  '--fps-iters', '1', '--out-json', str(out)]) == 0
    assert 'counting FLOPs' not in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record['flops'] is None and record['fps'] > 0 and record['shape'] == [64, 96]
    assert record['params']['all'] == model_complexity.count_parameters(
        build_detector(load_config(config)))['all']


# ---------------------------------------------------------------- vis_sampling_points
class RecordOp(torch.utils._python_dispatch.TorchDispatchMode):
    """Sees every call of the compiled op at the dispatcher, independently of the tool."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.ddetr.ms_deform_attn.default:
            self.calls.append((args[3].clone(), args[4].clone()))
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not HAS_COMPILED_OP, reason='ddetr._C not built')
def test_captured_points_are_what_the_op_received(tiny_config, image):
    from ddetr.apis import prepare_image
    from ddetr.models.layers import multi_scale_deformable_attention as msda_module
    from ddetr.ops import ms_deform_attn
    model = init_detector(tiny_config, None)
    batch = prepare_image(model, image)
    with torch.no_grad():
        plain = model(batch['inputs'], batch['data_samples'], mode='tensor')
    with RecordOp() as recorder:
        result = vis.sampling_points(model, batch)
    assert msda_module.ms_deform_attn is ms_deform_attn  # restored
    assert len(recorder.calls) == 2  # 1 encoder + 1 decoder layer
    records = result['capture'].records
    for name, (locations, weights) in zip(('encoder', 'decoder'), recorder.calls):
        assert torch.equal(records[name]['sampling_locations'], locations)
        assert torch.equal(records[name]['attention_weights'], weights)
    # the capture changes nothing
    with torch.no_grad():
        again = model(batch['inputs'], batch['data_samples'], mode='tensor')
    for a, b in zip(plain, again):
        assert torch.equal(a, b)
    # the default decoder query is the best-scoring one; points are that query's
    scores = plain[0][-1, 0].sigmoid().max(-1)[0]
    dec = result['decoder']
    assert dec['index'] == int(scores.argmax())
    assert dec['score'] == pytest.approx(float(scores.max()))
    assert dec['points'].shape == (4, 4, 4, 2) and dec['weights'].shape == (4, 4, 4)
    torch.testing.assert_close(dec['weights'], recorder.calls[1][1][0, dec['index']])
    # scale factor 1, no padding: pixels = normalized * (W, H)
    torch.testing.assert_close(dec['points'],
                               recorder.calls[1][0][0, dec['index']] * torch.tensor([128., 96.]))


def test_pixel_conversion():
    points = torch.tensor([[[0.5, 0.5]], [[0.25, 0.1]]])  # (L=2, K=1, 2)
    ratios = torch.tensor([[1.0, 1.0], [0.5, 0.8]])
    out = vis.to_image_pixels(points, ratios, img_shape=(100, 200), scale_factor=(2.0, 0.5))
    # level 0: 0.5 * 200 / 2 = 50, 0.5 * 100 / 0.5 = 100; level 1 through its valid
    # ratio: 0.25 / 0.5 * 200 / 2 = 50, 0.1 / 0.8 * 100 / 0.5 = 25
    torch.testing.assert_close(out, torch.tensor([[[50.0, 100.0]], [[50.0, 25.0]]]))
    with pytest.raises(ValueError, match=r'\(\.\.\., L, K, 2\) with L = 2'):
        vis.to_image_pixels(torch.zeros(3, 1, 2), ratios, (100, 200))
    # the encoder query under a point: level 1 of a (10, 20) map over a 100 x 200 input
    shapes = torch.tensor([[20, 40], [10, 20]])
    starts = torch.tensor([0, 800])
    index, row, col = vis.encoder_query_index((105.0, 47.0), 1, shapes, starts,
                                              torch.ones(2, 2), (100, 200))
    assert (row, col) == (4, 10) and index == 800 + 4 * 20 + 10
    with pytest.raises(ValueError, match='--encoder-level 2'):
        vis.encoder_query_index((0, 0), 2, shapes, starts, torch.ones(2, 2), (100, 200))


def test_vis_tool_writes_the_figure(tiny_config, image, tmp_path, capsys, one_line_exit):
    out = tmp_path / 'fig' / 'fig6.png'
    assert vis.main([tiny_config, 'none', image, '--out', str(out), '--query-point', '45',
                     '55']) == 0
    printed = capsys.readouterr().out
    assert f'wrote {out}' in printed
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] > picture.shape[0] > 200
    # the encoder query's reference point (green cross) is the centre of the level-0
    # pixel under the requested point: stride 8 of the network input, which the test
    # pipeline scales by 256 / 128 = 2, so 4 pixels of the 96 x 128 image
    stride = 8 / 2
    m = re.search(r'reference point \(([\d.]+), ([\d.]+)\)', printed)
    assert (float(m[1]), float(m[2])) == ((45 // stride + 0.5) * stride,
                                          (55 // stride + 0.5) * stride) == (46.0, 54.0)
    assert '--query-index 10: the model has 10 object queries' in one_line_exit(
        vis.main, [tiny_config, 'none', image, '--query-index', '10', '--out', str(out)])
    assert f'image file not found: {tmp_path / "nope.jpg"}' in one_line_exit(
        vis.main, [tiny_config, 'none', str(tmp_path / 'nope.jpg'), '--out', str(out)])


# ---------------------------------------------------------------- benchmark_model
def test_mmdet_equivalent_refuses_what_mmdet_lacks():
    def model_of(name):
        return Config.fromfile(osp.join(ROOT, 'configs', name)).model
    cfg = mmdet_model_cfg(model_of('ddetr_r50_refine_twostage.py'))
    assert (cfg['with_box_refine'], cfg['as_two_stage']) == (True, True)
    assert cfg['neck']['type'] == 'ChannelMapper' and cfg['neck']['num_outs'] == 4
    assert cfg['backbone']['init_cfg'] is None
    assert cfg['encoder']['layer_cfg']['self_attn_cfg']['num_points'] == 4
    with pytest.raises(ConversionError, match='neck BiFPN'):
        mmdet_model_cfg(model_of('table2/ddetr_r50_bifpn.py'))
    with pytest.raises(ConversionError, match='multi_scale_attention=False'):
        mmdet_model_cfg(model_of('table2/ddetr_r50_ms_inputs_k4.py'))


def test_benchmark_smoke(tmp_path, capsys, one_line_exit):
    """A tiny Table 1 base model (ResNet-18, 1 + 1 layers) at 64 x 96: both rows, the
    ratios and memory are reported and the two models compute the same outputs."""
    config = tmp_path / 'tiny_r50.py'
    config.write_text(f"""
_base_ = {osp.join(ROOT, 'configs', 'ddetr_r50.py')!r}
model = dict(num_queries=30, backbone=dict(depth=18), neck=dict(in_channels=[128, 256, 512]),
             encoder=dict(num_layers=1, layer_cfg=dict(feedforward_channels=64)),
             decoder=dict(num_layers=1, layer_cfg=dict(feedforward_channels=64)))
""")
    result_file = tmp_path / 'bench.json'
    assert benchmark_model.main([str(config), '--shape', '64', '96', '--iters', '1',
                                 '--threads', '1', '--json', str(result_file)]) == 0
    out = capsys.readouterr().out
    assert re.search(r'^CPU: .+, \d+ logical cores, bfloat16 hardware: \S', out, re.M)
    table = [line for line in out.splitlines() if line.startswith('| ')]
    assert [row.split('|')[1].strip() for row in table[1:]] == [
        'ddetr (compiled op)', 'mmdet 3.3 (mmcv grid_sample fallback)', 'ratio mmdet / ddetr']
    ratio_cells = table[-1].strip('|').split('|')[1:]  # train, inference, 2 x memory
    assert len(ratio_cells) == 4
    assert all(re.match(r'\s*\d+\.\d+x', cell) for cell in ratio_cells)
    assert 'target >= 3x' in ratio_cells[0] and 'target >= 2.5x' in ratio_cells[1]
    results = json.loads(result_file.read_text())
    assert set(results['ratios']) == {'train', 'inference', 'train_memory',
                                      'inference_memory'}
    for impl in ('ddetr', 'mmdet'):
        assert results['time_ms'][impl]['train'] > results['time_ms'][impl]['inference'] > 0
        assert results['peak_mb'][impl]['train'] > 0
    assert results['max_difference']['logits'] < 1e-4
    assert results['max_difference']['boxes'] < 1e-4
    # training peak with activation checkpointing, next to the peak without it
    assert results['with_cp']['train_peak_mb'] > 0
    assert results['with_cp']['without_train_peak_mb'] == results['peak_mb']['ddetr']['train']
    assert 'activation checkpointing (with_cp=True' in out
    assert 'does not exist' in one_line_exit(benchmark_model.main,
                                                 [str(tmp_path / 'nope.py')])


def test_benchmark_model_names_a_misspelt_config_key(capsys, one_line_exit):
    """A typo in --cfg-options stops before any timing with the key and its likely fix,
    not with a traceback through the constructors."""
    err = one_line_exit(benchmark_model.main, ['--cfg-options', 'model.encoder.num_layerz=2',
                                                   '--no-memory'])
    assert "'num_layerz'" in err and "did you mean 'num_layers'" in err


# ------------------------------------------------------------- amp_geometry_error
def test_amp_geometry_error_reports_float32_locations_per_level():
    """The quick-start model under CPU bfloat16 autocast: the op gets float32 locations
    and the encoder's move by at most 0.01 px on every level (0.08-0.44 px when they
    followed the features' bfloat16)."""
    lines = []
    args = amp_geometry_error.parse_args(['--shape', '128', '192'])
    results = amp_geometry_error.run(args, log=lines.append)
    assert set(results) == {'encoder', 'decoder'}
    assert len(results['encoder']) == 4 and max(results['encoder']) <= 0.01
    encoder_line, = [line for line in lines if line.startswith('encoder:')]
    assert 'op got float32 locations' in encoder_line and '16x24' in encoder_line


def test_benchmark_op_floor_counts_the_bytes_the_op_must_move():
    """The paper's encoder workload (msda-kernel-notes): forward 79.7 MB in float32
    (value, locations, weights, output), backward 136.5 MB more; half in bfloat16."""
    inputs = benchmark_op.make_inputs('encoder')
    forward = benchmark_op.bytes_moved(inputs, backward=False)
    both = benchmark_op.bytes_moved(inputs, backward=True)
    assert forward / 1e6 == pytest.approx(79.7, abs=0.2)
    assert (both - forward) / 1e6 == pytest.approx(136.5, abs=0.5)
    half = [t.bfloat16() if t.is_floating_point() else t for t in inputs]
    assert benchmark_op.bytes_moved(half, backward=True) * 2 == both
    bandwidth = benchmark_op.copy_bandwidth(1 << 20, min_seconds=0.01)
    assert bandwidth > 1e8  # bytes per second: at least 0.1 GB/s on any machine
    assert benchmark_op.floor_ms(inputs, True, bandwidth) == pytest.approx(
        both / bandwidth * 1e3)


# ------------------------------------------------------------- benchmark_dropout
@pytest.mark.skipif(not HAS_COUNTER_DROPOUT, reason='ddetr._C is not built')
def test_benchmark_dropout_prints_both_implementations_and_their_ratio(capsys):
    assert benchmark_dropout.main(['--scale', '0.001', '--repeat', '1', '--threads', '1',
                                   '--dtypes', 'float32', 'bfloat16']) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| ')]
    assert len(rows) == 1 + 4  # header, 2 tensors x 2 dtypes
    assert rows[1].startswith('| FFN hidden (22 x 1024) | float32 |')
    assert all(re.search(r'\| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d+x \|$', row)
               for row in rows[1:])


# ------------------------------------------------------------------- profile_step

def test_profile_step_tables_a_training_step(tmp_path, capsys):
    """Two profiled steps of a shrunken quick-start model on generated images: the step
    time, one row per kind of op with its share (largest first, the rows and the rest adding
    up to the whole profiled step) and the Chrome trace."""
    config = write_config(tmp_path)  # tools/train.py's tests' tiny config, batch 2
    trace = tmp_path / 'trace.json'
    assert profile_step.main([config, '--steps', '2', '--warmup', '1', '--rows', '5',
                              '--trace', str(trace)]) == 0
    out = capsys.readouterr().out
    assert re.search(r'^CPU: .+, \d+ logical cores, bfloat16 hardware: \S', out, re.M)
    assert re.search(r'tiny\.py: \d+\.\d ms a training step \(2 steps, batch 2, ', out)
    rows = [line.strip('|').split('|') for line in out.splitlines()
            if line.startswith('| ') and not line.startswith('| op ')]
    assert len(rows) == 6 and rows[-1][0].strip().endswith('other kinds)')
    ms = [float(row[1]) for row in rows[:-1]]
    assert ms == sorted(ms, reverse=True) and ms[0] > 0
    shares = [float(row[2].strip().rstrip('%')) for row in rows]
    assert sum(shares) == pytest.approx(100, abs=0.6)  # each rounded to 0.1 %
    assert any(row[0].strip().startswith('aten::') for row in rows[:-1])
    assert json.loads(trace.read_text())['traceEvents']


def test_profile_step_names_a_missing_config(capsys, one_line_exit):
    assert 'nope/missing.py does not exist' in one_line_exit(profile_step.main,
                                                                 ['nope/missing.py'])


def test_amp_geometry_error_names_a_misspelt_config_key(tmp_path, capsys, one_line_exit):
    config = tmp_path / 'typo.py'
    config.write_text(f"_base_ = {QUICKSTART!r}\nmodel = dict(neck=dict(out_channel=64))\n")
    err = one_line_exit(amp_geometry_error.main, [str(config), '--shape', '64', '64'])
    assert "'out_channel' (did you mean 'out_channels'?)" in err
