#!/usr/bin/env bash
# Distributed training on one or several nodes with torchrun (NCCL on GPUs, gloo on CPU-only machines).
#
# Usage: tools/dist_train.sh CONFIG NPROC_PER_NODE [train.py options...]
# Multi-node: run it on every node with NNODES, NODE_RANK and MASTER_ADDR set (same PORT everywhere), e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 tools/dist_train.sh CONFIG 8     # on the first node
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 tools/dist_train.sh CONFIG 8     # on the second
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [[ -x "$ROOT/.venv/bin/python" ]] && echo "$ROOT/.venv/bin/python" || echo python )}"
exec "$PYTHON" -m torch.distributed.run \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" \
  --master_port "${PORT:-29500}" --nproc_per_node "$NPROC" \
  "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
