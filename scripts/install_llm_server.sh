#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server into its own venv (default
# .venv-llm-server), for the slow test tests/test_llm_server.py and for serving a local GGUF
# model to the LLM planner:
#   .venv-llm-server/bin/python -m llama_cpp.server --model X.gguf --host 127.0.0.1 --port 8080 \
#       --n_ctx 8192 --model_alias local --n_threads 1 --n_threads_batch 1
# It builds from source (7-15 minutes on 2 cores the first time; pip's cache keeps the wheel).
# GGML_NATIVE=OFF: a wheel that runs on any x86-64 machine the cache is shared with.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${INTERN_LLM_SERVER_VENV:-.venv-llm-server}
PYTHON=${PYTHON:-python3}
if "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  echo "llama-cpp-python server already installed in $VENV"
  exit 0
fi
"$PYTHON" -m venv "$VENV"
CMAKE_ARGS="-DGGML_NATIVE=OFF" "$VENV/bin/python" -m pip install --quiet "llama-cpp-python[server]==0.3.36"
"$VENV/bin/python" -c "import llama_cpp.server"
echo "llama-cpp-python server installed in $VENV"
