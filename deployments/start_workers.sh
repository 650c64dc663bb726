#!/usr/bin/env bash
# Start ml-intern's workers on this host, in the background, logs under $INTERN_LOG_DIR.
#   one process worker per GPU on intern-gpu: CUDA_VISIBLE_DEVICES=<i>, --limit 1 (a GPU
#   never runs two experiments), named gpu-<host>-<i>;
#   with --controller, also one worker on intern-cpu for research-loop / nightly-sweep.
#
#   bash deployments/start_workers.sh [--gpus "0 1 2 3"] [--controller] [--no-gpu]
#
# Environment every worker passes to its flow runs (set them here or in your shell):
#   PREFECT_API_URL        the Prefect server (http://host:4200/api)
#   INTERN_TRACKING_URI    the MLflow tracking server (http://host:5000) or a shared DB
#   INTERN_WORK_DIR        shared storage for data, checkpoints and champions (same path on
#                          every host: the controller hands model paths to the GPU workers)
#   INTERN_MODELS_DIR      converted builtin models (shared or per host)
#   INTERN_PROJECT_DIR     this checkout (defaults to the repo root; the pull step cds there)
# Stop them with: kill $(cat "$INTERN_LOG_DIR"/*.pid)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
[ -f .venv/bin/activate ] && . .venv/bin/activate
. scripts/env.sh
export INTERN_PROJECT_DIR="${INTERN_PROJECT_DIR:-$ROOT}"
LOG_DIR="${INTERN_LOG_DIR:-$ROOT/.intern/workers}"
mkdir -p "$LOG_DIR"
HOST="$(hostname -s 2>/dev/null || hostname)"

GPUS=""
CONTROLLER=0
NO_GPU=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) GPUS="$2"; shift 2 ;;
    --controller) CONTROLLER=1; shift ;;
    --no-gpu) NO_GPU=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$GPUS" ] && [ "$NO_GPU" = 0 ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    GPUS="$(nvidia-smi --query-gpu=index --format=csv,noheader | tr '\n' ' ')"
  fi
  [ -n "$GPUS" ] || { echo "no GPU found (nvidia-smi); pass --gpus \"0 1\" or --no-gpu" >&2; exit 1; }
fi

start() {  # name, then an env(1) command line: VAR=value... command args...
  local name="$1"; shift
  # The Prefect worker (exec'd in place of this sh, so $$ is its pid) owns the persistent training
  # worker of its GPU: it outlives each experiment's flow-run process and exits with the Prefect worker.
  sh -c 'export INTERN_WORKER_OWNER_PID=$$; exec env "$@"' _ "$@" > "$LOG_DIR/$name.log" 2>&1 &
  echo $! > "$LOG_DIR/$name.pid"
  echo "started $name (pid $!, log $LOG_DIR/$name.log)"
}

if [ "$NO_GPU" = 0 ]; then
  for i in $GPUS; do
    start "gpu-$HOST-$i" CUDA_VISIBLE_DEVICES="$i" INTERN_GPU_ID="$i" \
      prefect worker start --pool intern-gpu --type process --limit 1 --name "gpu-$HOST-$i"
  done
fi
if [ "$CONTROLLER" = 1 ]; then
  start "controller-$HOST" prefect worker start --pool intern-cpu --type process --name "controller-$HOST"
fi
