#!/usr/bin/env bash
# Stop everything deployments/start_workers.sh started on this host: the Prefect workers, the
# flow runs they started, and every process below those (training, evaluation, sidecars), found
# by process group, by parent, and by INTERN_PROC_GROUP=$INTERN_LOG_DIR in their environment.
# SIGTERM first; whatever is still running after --timeout seconds (default 15) gets SIGKILL.
# Interrupted experiments are marked in MLflow and re-run when their controller resumes.
#
#   bash deployments/stop_workers.sh [--timeout 15]      (same INTERN_LOG_DIR as start_workers.sh)
#   python deployments/proc.py status --dir "$INTERN_LOG_DIR"   lists what is running
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"  # a relative INTERN_LOG_DIR means the same folder as for start_workers.sh
[ -f "$ROOT/.venv/bin/activate" ] && . "$ROOT/.venv/bin/activate"
LOG_DIR="${INTERN_LOG_DIR:-$ROOT/.intern/workers}"
exec python "$ROOT/deployments/proc.py" stop --dir "$LOG_DIR" "$@"
