#!/usr/bin/env bash
# Distributed testing under torchrun.
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROC [tools/test.py options...]
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROC [tools/test.py options...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NUM_PROC=$3
shift 3
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NUM_PROC" \
  --master_port="${PORT:-29500}" "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" \
  --launcher pytorch "$@"
