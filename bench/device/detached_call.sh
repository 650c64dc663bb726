#!/usr/bin/env bash
# A loop longer than one device call (600 s): the first call starts bench/device/parallel_call.sh in its
# own process session (the device keeps such a process running between calls on a warm machine), the
# next call, made at once, waits for it and brings its results back.
#   MODE=start   TAG=long14 WAIT_S=570 <parallel_call.sh's variables, CALL_S covering the whole loop> bash bench/device/detached_call.sh
#   MODE=collect TAG=long14 WAIT_S=570 bash bench/device/detached_call.sh
# Prints DETACHED LOST if the collecting call finds no such run (the machine was replaced in between).
set -uo pipefail
tag=${TAG:?TAG names the run}
dir=/root/detached_$tag
wait_s=${WAIT_S:-570}
progress() { tail -3 "$dir/call.log" 2>/dev/null; tail -2 /root/$tag/workers/*.log 2>/dev/null | tail -4; }
if [ "${MODE:?start or collect}" = start ]; then
  mkdir -p "$dir/out"
  OUT="$dir/out" setsid bash bench/device/parallel_call.sh >"$dir/call.log" 2>&1 < /dev/null &
  echo $! >"$dir/pid"
  echo "started $tag (pid $(cat "$dir/pid")) at $(date +%T)"
else
  [ -f "$dir/pid" ] || { echo "DETACHED LOST: no run $tag on this machine"; exit 3; }
fi
end=$((SECONDS + wait_s))
while kill -0 "$(cat "$dir/pid")" 2>/dev/null && [ $SECONDS -lt $end ]; do
  sleep 30
  echo "--- $(date +%T)"; progress
done
if kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
  echo "still running at $(date +%T): call again with MODE=collect"
  exit 0
fi
echo "finished: $tag"
cat "$dir/call.log"
cp -r "$dir"/out/* "$OUT"/ 2>/dev/null || true
ls -la "$OUT"
