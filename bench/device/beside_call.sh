#!/usr/bin/env bash
# Several research loops at once on one host, each on its own GPUs, with its own Prefect server, workers,
# MLflow store and work dir (bench/device/parallel_call.sh each): a multi-GPU loop and its 1-GPU
# baseline in the same call, on the same machine, with the same goal and budget.
#   RUNS="x2:0,1 x1:2" GOAL=bench/goals/arith_long.json BUDGET=420 WALL_MIN=7 CALL_S=520 LOOP_S=490 \
#     bash bench/device/beside_call.sh
# RUNS: TAG:GPUS pairs. The loops share the host's CPUs and disk (16 cores a GPU on the H200 machines);
# say so beside their results. Each run's JSON lands in $OUT/<TAG>.json, its log in $OUT/<TAG>.log.
set -uo pipefail
[ -n "${RUNS:-}" ] || { echo "RUNS=\"TAG:GPUS ...\" is required"; exit 2; }
pids=()
for run in $RUNS; do
  tag=${run%%:*}
  gpus=${run#*:}
  TAG=$tag GPUS=$gpus bash bench/device/parallel_call.sh >"$OUT/$tag.log" 2>&1 &
  pids+=($!)
  echo "started $tag on GPUs $gpus (pid $!) at $(date +%T)"
done
rc=0
for pid in "${pids[@]}"; do
  wait "$pid" || rc=$?
done
for run in $RUNS; do
  tag=${run%%:*}
  echo "=== $tag"
  tail -40 "$OUT/$tag.log"
done
exit $rc
