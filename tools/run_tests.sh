#!/usr/bin/env bash
# Sets up ddetr when needed (tools/setup.sh) and runs the test suite. Extra arguments go
# to pytest, e.g. `bash tools/run_tests.sh tests/ops -k gradcheck`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
exec "${DDETR_VENV:-$ROOT/.venv}/bin/python" -m pytest -q "$@"
