#!/usr/bin/env bash
# On a staged machine (unstage.sh 1..4): build-ahead against one worker a GPU (bench/build_ahead.py) on GPU 0.
. bench/device/env.sh
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
export DEVICE_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
CUDA_VISIBLE_DEVICES=0 timeout ${CALL_S:-500} python3 bench/build_ahead.py --steps ${STEPS:-300} --batch 64 \
  --rows-b ${ROWS_B:-30000} --dev 100 --work /root/build_ahead --out $OUT/build_ahead.json > $OUT/build_ahead.log 2>&1
echo "build_ahead rc=$?"; grep -E "^(one-worker|build-ahead) |ratio|Error|error" $OUT/build_ahead.log | tail -20
