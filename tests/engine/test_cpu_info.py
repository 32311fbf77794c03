"""cpu_description: the CPU line of the benchmark and profiling tools."""
import os

from ddetr.engine.cpu_info import bfloat16_hardware, cpu_description, read_cpuinfo

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: another name that must not be read
flags\t\t: fpu
"""


def test_reads_the_first_processor_only(tmp_path):
    path = tmp_path / 'cpuinfo'
    path.write_text(CPUINFO)
    info = read_cpuinfo(str(path))
    assert info['model name'] == 'Intel(R) Xeon(R) Processor'
    assert 'amx_tile' in info['flags'].split()


def test_missing_cpuinfo_is_none(tmp_path):
    assert read_cpuinfo(str(tmp_path / 'nope')) is None


def test_bfloat16_hardware_kinds():
    avx512 = ['avx512f', 'avx512bw', 'avx512vl', 'avx512dq']
    assert bfloat16_hardware(avx512 + ['avx512_bf16', 'amx_bf16', 'amx_tile'], True) == 'AMX'
    assert bfloat16_hardware(avx512 + ['avx512_bf16'], True) == 'AVX-512 BF16'
    assert bfloat16_hardware(avx512, True) == 'AVX-512'
    assert bfloat16_hardware(['avx2', 'fma'], False) == 'none'
    # no tiles: AMX cannot run
    assert bfloat16_hardware(['avx2', 'amx_bf16'], False) == 'none'


def test_without_bf16_flags_the_amp_wrappers_test_decides(monkeypatch, tmp_path):
    """'AVX-512' or 'none' is what CPUAmpOptimWrapper's cpu_has_fast_bfloat16 says, so the
    line agrees with whether training autocasts."""
    from ddetr.engine import cpu_info
    path = tmp_path / 'cpuinfo'
    path.write_text('model name\t: Some CPU\nflags\t\t: fpu avx2\n')
    for fast, expected in ((True, 'AVX-512'), (False, 'none')):
        monkeypatch.setattr(cpu_info, 'cpu_has_fast_bfloat16', lambda fast=fast: fast)
        assert cpu_description(read_cpuinfo(str(path))).endswith(f'hardware: {expected}')


def test_description_names_model_cores_and_hardware(tmp_path):
    path = tmp_path / 'cpuinfo'
    path.write_text(CPUINFO)
    line = cpu_description(read_cpuinfo(str(path)))
    assert line == (f'CPU: Intel(R) Xeon(R) Processor, {os.cpu_count()} logical cores, '
                    f'bfloat16 hardware: AMX')


def test_description_without_flags_says_unknown():
    assert cpu_description({'model name': 'Some CPU'}).endswith('bfloat16 hardware: unknown')


def test_description_of_this_machine():
    line = cpu_description()
    assert line.startswith('CPU: ') and 'logical cores' in line
