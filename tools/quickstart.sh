#!/usr/bin/env bash
# The README's main command: sets up ddetr when needed, then runs the quick start on the
# built-in default (no downloads): generate the synthetic dataset, train, evaluate the 12
# COCO metrics, draw ground truth vs predictions. Options go to tools/quickstart.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
exec "${DDETR_VENV:-$ROOT/.venv}/bin/python" tools/quickstart.py "$@"
