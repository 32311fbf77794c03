#!/usr/bin/env bash
# Distributed training under torchrun (DDP; gloo on CPU, NCCL on GPU).
#   bash tools/dist_train.sh CONFIG NUM_PROC [tools/train.py options...]
# PORT (default 29500), NNODES, NODE_RANK and MASTER_ADDR are honoured for multi-node runs.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash tools/dist_train.sh CONFIG NUM_PROC [tools/train.py options...]" >&2
  exit 2
fi
CONFIG=$1
NUM_PROC=$2
shift 2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
exec "$PYTHON" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
  --nproc_per_node="$NUM_PROC" "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
