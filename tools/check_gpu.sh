#!/usr/bin/env bash
# One command to verify the CUDA kernel on a GPU machine (< 5 min): builds ddetr._C for the
# local GPU's arch (in place), runs the CUDA tests (op, detector, mixed precision), the op
# under compute-sanitizer's memcheck (when the toolkit has it) and
# `benchmark_op.py --device cuda`, prints one summary. Exit 0 only if all pass.
#   DDETR_PYTHON  the Python to use (default: $DDETR_VENV/bin/python, DDETR_VENV=.venv)
#   DDETR_LOGS    folder for the logs (default: a new temporary folder)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${DDETR_PYTHON:-${DDETR_VENV:-$ROOT/.venv}/bin/python}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
arch=$("$PY" tools/check_gpu.py arch) || exit $?
logs=${DDETR_LOGS:-$(mktemp -d)}
mkdir -p "$logs"
echo "== build ddetr._C for sm_${arch/./} (log: $logs/build.log)"
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch "$PY" setup.py -q build_ext --inplace > "$logs/build.log" 2>&1
build_rc=$?
[ $build_rc -eq 0 ] || tail -30 "$logs/build.log"
echo "== CUDA tests"
timeout 180 "$PY" -m pytest -q tests/ops/test_ms_deform_attn_cuda.py \
  tests/models/detectors/test_deformable_detr_cuda.py \
  tests/models/detectors/test_deformable_detr_mixed_precision.py -k "cuda or CUDA" 2>&1 | tee "$logs/tests.log" | tail -15
echo "== memcheck of the op (compute-sanitizer)"
sanitizer=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null)
memcheck=()
if [ -n "$sanitizer" ]; then
  timeout 240 "$sanitizer" --tool memcheck --error-exitcode 3 "$PY" tools/check_gpu.py workload \
    > "$logs/memcheck.log" 2>&1
  memcheck=(--memcheck-rc $? --memcheck-log "$logs/memcheck.log")
  tail -3 "$logs/memcheck.log"
fi
echo "== GPU benchmark"
timeout 90 "$PY" tools/analysis/benchmark_op.py --device cuda --repeat 10 2>&1 | tee "$logs/bench.log" | tail -20
echo
"$PY" tools/check_gpu.py summary --build-rc "$build_rc" --arch "$arch" "${memcheck[@]}" \
  "$logs/tests.log" "$logs/bench.log"
