#!/usr/bin/env bash
# Training under SLURM: one task per GPU, mmengine's slurm launcher reads the rank and world size from SLURM.
#
# Usage: tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options...]
# Env:   GPUS (total, default 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK (default 5), SRUN_ARGS (extra srun flags)
# Example (16 GPUs on 2 nodes): GPUS=16 tools/slurm_train.sh gpu overlock CONFIG work_dirs/overlock
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [[ -x "$ROOT/.venv/bin/python" ]] && echo "$ROOT/.venv/bin/python" || echo python )}"
srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
  --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
  "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir "$WORK_DIR" --launcher slurm "$@"
