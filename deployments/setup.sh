#!/usr/bin/env bash
# ONE command: create the work pools (intern-cpu, intern-gpu, intern-gpu-docker), the global
# concurrency limits (gpu, gpu-<i>) and deploy everything in prefect.yaml, against the Prefect
# server in PREFECT_API_URL (e.g. http://prefect-host:4200/api). Idempotent.
#   bash deployments/setup.sh [--gpus N] [--controller-slots N] [--no-deploy]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
[ -f .venv/bin/activate ] && . .venv/bin/activate
. scripts/env.sh
exec python deployments/pools.py "$@"
