#!/usr/bin/env bash
# kill_run.sh "[MPIEXEC FLAGS -np N]" DRIVER INSPECT DECK WORKDIR TRIALS SEED: kill -9 at random
# moments. The deck runs once whole (checkpoints every 2 chunks per rank, 2 kept); then TRIALS
# times it is started and every process of the job is killed with SIGKILL after a delay drawn
# uniformly from [0, the whole run's time] (bash's RANDOM seeded with SEED, so the moments repeat).
# After each kill, every checkpoint left under its final name must pass proteus_inspect (complete,
# checksums right), and a restart from the newest (or a fresh run when none was written) must end
# with the summary of the whole run. An empty launcher ("") runs the driver directly.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/run_helpers.sh"
launcher=($1) driver=$2 inspect=$3 deck=$4 work=$5 trials=$6 seed=$7
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
common=(--set checkpoint.interval_chunks=2 --set checkpoint.keep_last=2 --set output.progress_seconds=0)
started=$(date +%s%N)
"${launcher[@]}" "$driver" -q "$deck" "${common[@]}" --set output.directory=whole --set checkpoint.directory=whole/ck \
  >whole.log 2>&1 || { cat whole.log; echo "uninterrupted run failed"; exit 1; }
whole_ms=$((($(date +%s%N) - started) / 1000000))
summary_key whole.log >whole.key
RANDOM=$seed
killed=0 failures=0
for trial in $(seq 1 "$trials"); do
  delay_ms=$((RANDOM % (whole_ms + 1)))
  dir=$PWD/trial$trial  # absolute: pkill finds this job's processes by it
  "${launcher[@]}" "$driver" -q "$deck" "${common[@]}" --set output.directory="$dir" --set checkpoint.directory="$dir/ck" \
    >"trial$trial.log" 2>&1 &
  job=$!
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  how="finished before the kill"
  if pkill -KILL -f "output.directory=$dir( |$)"; then how="killed"; killed=$((killed + 1)); fi
  wait $job 2>/dev/null
  why=""
  for ck in "$dir"/ck/checkpoint_*.h5; do
    [ -e "$ck" ] || continue
    "$inspect" "$ck" >/dev/null 2>"trial$trial.inspect.err" || why="$ck does not pass proteus_inspect: $(head -1 "trial$trial.inspect.err")"
  done
  newest=$(ls "$dir"/ck/checkpoint_*.h5 2>/dev/null | sort | tail -1)
  restart=()
  [ -n "$newest" ] && restart=(--restart "$newest")
  if [ -z "$why" ]; then
    "${launcher[@]}" "$driver" -q "$deck" "${common[@]}" --set output.directory="$dir.resumed" \
      --set checkpoint.directory="$dir.resumed/ck" "${restart[@]}" >"trial$trial.resumed.log" 2>&1 ||
      why="restart failed: $(tail -2 "trial$trial.resumed.log")"
  fi
  [ -z "$why" ] && ! diff <(summary_key "trial$trial.resumed.log") whole.key >/dev/null && why="restart differs from the whole run"
  from=${newest:+$(basename "$newest")}
  if [ -n "$why" ]; then
    echo "FAIL trial $trial ($how at ${delay_ms} ms): $why"
    failures=$((failures + 1))
  else
    echo "ok   trial $trial: $how at ${delay_ms} of ${whole_ms} ms; restarted from ${from:-the start}; summary equal"
  fi
done
[ $failures -eq 0 ] || exit 1
[ $killed -gt 0 ] || { echo "no trial killed the job before its end: the test proved nothing"; exit 1; }
echo "kill -9: $killed of $trials trials killed mid-run, every restart equal to the whole run"
