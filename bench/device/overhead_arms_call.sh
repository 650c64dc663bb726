#!/usr/bin/env bash
# Device call 3 on a 4-GPU lease (carry .stage/c3): the last chunk installs; then, side by side,
# the fixed-cost benchmark on GPU 0 (also the smoke test of the GPU paths) and budget arms on the
# other GPUs:  RUNS="a:300:0,c:300:0,c:300:1" TAG=k bash bench/device/overhead_arms_call.sh
# The arms get what is left of the call's 600 s once the install is done.
set -uo pipefail
bash bench/device/unstage.sh 3 || exit 1
bash bench/device/overhead.sh > /tmp/overhead_call.log 2>&1 &
ov=$!
left=$((${CALL_END_S:-590} - SECONDS))
echo "install done at ${SECONDS} s; arms get ${left} s"
CALL_S=$left DEADLINE=$((left - 45)) GPUS=${GPUS:-1,2,3} bash bench/device/arms_call.sh
wait $ov
cat /tmp/overhead_call.log
