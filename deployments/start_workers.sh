#!/usr/bin/env bash
# Start ml-intern's workers on this host, in the background, logs under $INTERN_LOG_DIR.
#   one process worker per GPU on intern-gpu: CUDA_VISIBLE_DEVICES=<i>, named gpu-<host>-<i>,
#   polling its own work queue gpu-<i> (and `default`), --limit INTERN_QUEUE_DEPTH (default 2):
#   while one experiment trains, the next one's flow run starts, builds its rows and waits for the
#   GPU (a host lock, then the global limit gpu-<i>: a GPU never runs two jobs);
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
#
# Each worker runs under deployments/proc.py: its own session, SIGINT/SIGTERM at their defaults
# (`cmd &` from a script starts cmd with SIGINT ignored, and a Prefect worker stops on SIGTERM by
# sending itself SIGINT), pid in $INTERN_LOG_DIR/<name>.pid, INTERN_PROC_GROUP in its environment.
# Stop them, and everything they started (flow runs, training processes), with ONE command:
#   bash deployments/stop_workers.sh            (same INTERN_LOG_DIR; SIGKILL after 15 s)
# A plain `kill $(cat "$INTERN_LOG_DIR"/*.pid)` now stops idle workers; a busy Prefect worker
# waits for its flow runs to finish, which stop_workers.sh does not.
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

# A worker asks for scheduled flow runs every PREFECT_WORKER_QUERY_SECONDS (Prefect's default: 10 s, an
# average 5 s of idle GPU before every experiment); 2 s costs the API a query a second per 2 workers.
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-2}"

prefect_python() {  # the interpreter the Prefect CLI, and so every flow run it starts, runs on
  local line
  line="$(head -n1 "$(command -v prefect)")"
  line="${line#\#!}"
  case "$line" in
    "/usr/bin/env "*) command -v "${line#/usr/bin/env }" ;;
    *) echo "$line" ;;
  esac
}

start() {  # name, then an env(1) command line: VAR=value... command args...
  local name="$1"; shift
  python "$ROOT/deployments/proc.py" start --dir "$LOG_DIR" --name "$name" -- env "$@"
}
# Another long-lived process per GPU is added the same way (as the training worker's warm-up below):
#   start "trainer-$HOST-$i" CUDA_VISIBLE_DEVICES="$i" python -m <module> ...
# and stop_workers.sh stops it with the rest.

if [ "$NO_GPU" = 0 ]; then
  # each GPU's queue exists, and its worker takes the queue depth the controller fills it to
  DEPTH="$(python "$ROOT/deployments/pools.py" --gpu-queues "$GPUS")"
  for i in $GPUS; do
    start "gpu-$HOST-$i" CUDA_VISIBLE_DEVICES="$i" INTERN_GPU_ID="$i" \
      prefect worker start --pool intern-gpu --type process --limit "$DEPTH" --name "gpu-$HOST-$i" \
      --work-queue "gpu-$i" --work-queue default
    # Each GPU's persistent training worker starts now, owned by the Prefect worker and with its
    # environment and interpreter (so its flow runs find it), not with the first experiment: that start (imports, CUDA
    # context) was 20-30 s of idle GPU per GPU (bench/RESULTS.md part 11c). INTERN_WARM_WORKERS=0 skips it;
    # the fresh-process and accelerate paths have no persistent worker.
    if [ "${INTERN_WARM_WORKERS:-1}" != 0 ] && [ "${INTERN_TRAIN_WORKER:-persistent}" = persistent ] \
        && [ -z "${INTERN_ACCELERATE_CONFIG:-}" ]; then
      start "warm-$HOST-$i" CUDA_VISIBLE_DEVICES="$i" INTERN_GPU_ID="$i" \
        INTERN_WORKER_OWNER_PID="$(tr -d '[:space:]' < "$LOG_DIR/gpu-$HOST-$i.pid")" \
        "$(prefect_python)" -m mlintern.worker.warm
    fi
  done
fi
if [ "$CONTROLLER" = 1 ]; then
  start "controller-$HOST" prefect worker start --pool intern-cpu --type process --name "controller-$HOST"
fi
