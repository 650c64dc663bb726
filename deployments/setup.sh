#!/usr/bin/env bash
# ONE command: create the work pools (intern-cpu, intern-gpu; intern-gpu-docker with --docker),
# the global concurrency limits (gpu, gpu-<i>) and deploy prefect.yaml, against the Prefect
# server in PREFECT_API_URL (e.g. http://prefect-host:4200/api). Idempotent.
#   bash deployments/setup.sh [--gpus N] [--controller-slots N] [--docker] [--nightly|--no-nightly] [--no-deploy]
# Opt-in: --docker adds the Docker pool and the experiment-docker deployment; nightly-sweep is
# deployed with its schedule PAUSED until --nightly (a re-run without the flag keeps its state).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
[ -f .venv/bin/activate ] && . .venv/bin/activate
. scripts/env.sh
exec python deployments/pools.py "$@"
