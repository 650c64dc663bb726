#!/usr/bin/env bash
# On a staged machine: the fixed-cost benchmark (persistent worker vs fresh process) on GPU 0.
. bench/device/env.sh
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
export DEVICE_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
CUDA_VISIBLE_DEVICES=0 timeout 330 python3 bench/worker_overhead.py --jobs 3 --steps 40 --batch 8 --dev 300 \
  --work /root/overhead --out $OUT/overhead.json > $OUT/overhead.log 2>&1
echo "overhead rc=$?"; grep -E "^(fresh|persistent) |fixed_s|ratio|Error|error" $OUT/overhead.log | tail -20
