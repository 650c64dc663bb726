#!/usr/bin/env bash
# Install (if needed) and run the default test suite (not slow, not gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
. scripts/env.sh
python -m pytest "$@"
