"""tools/check_gpu.py, the Python parts of tools/check_gpu.sh, on the CPU."""
import importlib.util
import os.path as osp
import subprocess
import sys

_path = osp.join(osp.dirname(__file__), '..', '..', 'tools', 'check_gpu.py')
_spec = importlib.util.spec_from_file_location('ddetr_check_gpu_tool', _path)
check_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_gpu)

TESTS_OK = '........ss\n26 passed, 2 skipped in 40.1s\n'
BENCH_OK = '| encoder | ddetr (compiled) | 1.0 | 3.0 | 120 |\n'


def test_arch_from_capability_and_no_gpu():
    assert check_gpu.cuda_arch(capability=lambda: (9, 0), available=lambda: True) == '9.0'
    assert check_gpu.cuda_arch(capability=lambda: (8, 6), available=lambda: True) == '8.6'
    assert check_gpu.cuda_arch(available=lambda: False) is None


def test_arch_command_exits_2_without_a_gpu():
    # This machine has no GPU: the shell script stops here with a clear message.
    import torch
    if torch.cuda.is_available():
        return
    result = subprocess.run([sys.executable, _path, 'arch'], capture_output=True, text=True)
    assert result.returncode == 2 and 'no CUDA GPU' in result.stderr


def test_summary_ok_and_each_failure():
    text, ok = check_gpu.summary(0, TESTS_OK, BENCH_OK, '9.0')
    assert ok and 'OK (arch 9.0)' in text and '26 passed, 2 skipped' in text
    assert '| encoder | ddetr (compiled)' in text
    assert not check_gpu.summary(1, TESTS_OK, BENCH_OK, '9.0')[1]
    assert not check_gpu.summary(0, '25 passed, 1 failed in 3s', BENCH_OK, '9.0')[1]
    assert not check_gpu.summary(0, '', BENCH_OK, '9.0')[1]  # tests never ran
    assert not check_gpu.summary(0, TESTS_OK, 'Traceback (most recent call last)', '9.0')[1]


def test_parse_pytest_counts():
    assert check_gpu.parse_pytest('1 failed, 3 passed, 2 errors in 1s') == {
        'failed': 1, 'passed': 3, 'error': 2}


def test_summary_command(tmp_path):
    tests, bench = tmp_path / 't.log', tmp_path / 'b.log'
    tests.write_text(TESTS_OK)
    bench.write_text(BENCH_OK)
    assert check_gpu.main(['summary', '--build-rc', '0', '--arch', '9.0', str(tests),
                           str(bench)]) == 0


def test_memcheck_result_reads_the_error_summary():
    clean = 'workload: 6 forward+backward calls done\n========= ERROR SUMMARY: 0 errors\n'
    dirty = '========= Invalid __global__ read of size 4 bytes\n========= ERROR SUMMARY: 2 errors\n'
    assert check_gpu.memcheck_result(None, '') == ('not run (no compute-sanitizer)', True)
    assert check_gpu.memcheck_result(0, clean) == ('ok (0 errors)', True)
    assert check_gpu.memcheck_result(3, dirty) == ('2 errors (see memcheck.log)', False)
    # killed by the timeout, or the workload itself failed: no clean summary, not ok
    assert not check_gpu.memcheck_result(124, 'workload: 6')[1]
    assert not check_gpu.memcheck_result(0, '========= ERROR SUMMARY: 0 errors\n')[1]
    text, ok = check_gpu.summary(0, TESTS_OK, BENCH_OK, '9.0', 3, dirty)
    assert not ok and 'memcheck:  2 errors' in text


def test_memcheck_workload_runs_the_op_on_the_cpu():
    # The same calls compute-sanitizer watches on a GPU, through the C++ kernel here.
    assert check_gpu.memcheck_workload('cpu') == 6


def test_edge_locations_reach_past_both_borders():
    import torch
    x = check_gpu.edge_locations(7, torch.Generator().manual_seed(0))
    assert x.numel() == 32 and (x < 0).any() and (x > 1).any()
    assert {0.0, 1.0} <= set(x.tolist())


def test_workload_command_exits_2_without_a_gpu():
    import torch
    if torch.cuda.is_available():
        return
    result = subprocess.run([sys.executable, _path, 'workload'], capture_output=True, text=True)
    assert result.returncode == 2 and 'no CUDA GPU' in result.stderr
    assert 'Traceback' not in result.stderr
