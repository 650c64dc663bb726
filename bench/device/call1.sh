#!/usr/bin/env bash
# Device call 1 (carry .wheels/whl .wheels/tok .wheels/rgdata .wheels/snap .wheels/gguf_a):
# stage everything outside the tree (/root/stage survives on the warm machine), throughput, smoke test.
set -u
. bench/device/env.sh
mkdir -p $S && rm -rf $S/snap && cp -r .wheels/gguf_a .wheels/tok .wheels/rgdata .wheels/snap $S/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S/site .wheels/whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
python3 -c "import torch,transformers,trl,datasets,optuna,pydantic,liger_kernel,gguf;print('versions',torch.__version__,transformers.__version__,trl.__version__,datasets.__version__,optuna.__version__,pydantic.__version__)"
timeout ${TP_TIMEOUT:-400} python3 bench/throughput.py --out $OUT/tp.json --budget-s ${TP_BUDGET:-320} > $OUT/tp.log 2>&1
echo "throughput rc=$?"; grep -v "^{'" $OUT/tp.log | grep -iv "warn" | tail -40
python3 bench/make_model.py random $S/tok $S/smol_random > /dev/null 2>&1
timeout ${RX_TIMEOUT:-140} python3 bench/research_efficiency.py --model $S/smol_random --data $S/rgdata \
  --work /root/rx_smoke --out $OUT/rx_smoke.json --arms a,d --gpu-budget-s 20 --max-experiments 2 --deadline-s 80 \
  > $OUT/rx_smoke.log 2>&1
echo "smoke rc=$?"; grep -v "^{'" $OUT/rx_smoke.log | grep -iv warn | tail -30
f=$(ls /root/rx_smoke/s0/*/train.log 2>/dev/null | head -1); [ -n "$f" ] && cp "$f" $OUT/smoke_train.log
df -h /root | tail -1
