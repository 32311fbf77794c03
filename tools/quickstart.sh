#!/usr/bin/env bash
# The README's main command: sets up ddetr when needed, then runs the main job on the
# built-in default (no downloads). For now that is the op benchmark.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
exec "${DDETR_VENV:-$ROOT/.venv}/bin/python" tools/analysis/benchmark_op.py "$@"
