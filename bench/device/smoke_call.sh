#!/usr/bin/env bash
# Device call 3 (carry .stage/c3): the last chunk installs; then the fixed-cost benchmark on GPU 0,
# which is also the smoke test of the GPU paths (train task, fresh process and persistent worker,
# dev scored in the job, eval jobs).
set -uo pipefail
bash bench/device/unstage.sh 3 || exit 1
. bench/device/env.sh
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
export DEVICE_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
CUDA_VISIBLE_DEVICES=0 timeout 330 python3 bench/worker_overhead.py --jobs 3 --steps 40 --batch 8 --dev 300 \
  --work /root/overhead --out $OUT/overhead.json > $OUT/overhead.log 2>&1
echo "overhead rc=$?"; grep -E "^(fresh|persistent) |fixed_s|ratio|Error|error" $OUT/overhead.log | tail -20
for f in /root/overhead/fresh/0/train.log /root/overhead/persistent/0/train.log; do [ -f $f ] && tail -5 $f; done
