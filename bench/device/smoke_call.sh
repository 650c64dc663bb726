#!/usr/bin/env bash
# Device call 3 (carry .stage/c3): the last chunk installs; then the fixed-cost benchmark on GPU 0,
# which is also the smoke test of the GPU paths (train task, fresh process and persistent worker,
# dev scored in the job, eval jobs).
set -uo pipefail
bash bench/device/unstage.sh 3 || exit 1
bash bench/device/overhead.sh
for f in /root/overhead/fresh/0/train.log /root/overhead/persistent/0/train.log; do [ -f $f ] && tail -5 $f; done
