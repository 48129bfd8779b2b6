#!/usr/bin/env bash
# Usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] [PORT=...] [GRES=...] \
#          tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [extra args of tools/train.py]
# Trains with Slurm: srun starts GPUS tasks, GPUS_PER_NODE on each node, and every task runs
# tools/train.py --launcher slurm (mmengine's slurm launcher reads SLURM_PROCID, SLURM_NTASKS,
# SLURM_NODELIST and SLURM_LOCALID; the master is the first node of the allocation).
#   GPUS           tasks in all, one per GPU (default 8)
#   GPUS_PER_NODE  tasks and GPUs per node (default min(GPUS, 8))
#   CPUS_PER_TASK  CPUs per task, for the data loader workers (default 5)
#   SRUN_ARGS      extra srun options, e.g. "--quotatype=auto" or "--time=72:00:00"
#   PORT           rendezvous port of the master (default 29500, as mmengine)
#   GRES           srun --gres (default gpu:GPUS_PER_NODE; set it empty on CPU partitions)
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}"
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
GRES=${GRES-gpu:$GPUS_PER_NODE}
# word splitting is wanted: SRUN_ARGS holds several options
read -r -a SRUN_EXTRA <<< "${SRUN_ARGS:-}"
GRES_ARG=()
if [[ -n "$GRES" ]]; then GRES_ARG=("--gres=$GRES"); fi
# exported so that every task, on every node, meets on the same port
if [[ -n "${PORT:-}" ]]; then export MASTER_PORT="$PORT"; fi
export PYTHONPATH="$ROOT:${PYTHONPATH:-}"
# as tools/dist_train.sh: one intra-op thread per task unless told otherwise
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

set -x
srun -p "$PARTITION" \
  --job-name="$JOB_NAME" \
  "${GRES_ARG[@]}" \
  --ntasks="$GPUS" \
  --ntasks-per-node="$GPUS_PER_NODE" \
  --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=1 \
  "${SRUN_EXTRA[@]}" \
  "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "$@"
