#!/usr/bin/env bash
# stop_run.sh [MPIEXEC-AND-FLAGS...] -- DRIVER DECK WORKDIR: a real SIGTERM to every process of a
# running job (what a batch system's time limit or Ctrl-C delivers; under mpirun, mpirun gets it
# too): each rank must finish its chunk, the job must write a checkpoint and say where, and end
# non-zero (exactly 128 + 15 without a launcher: mpirun reports its own code); a second run with
# --restart from that checkpoint must finish with the summary of an uninterrupted run.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/run_helpers.sh"
launcher=()
while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
[ ${#launcher[@]} -eq 0 ] && launcher=(env)  # "env DRIVER": no launcher, and pkill still finds the driver
shift
driver=$1 deck=$2 work=$3
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
common=(--set sequence.tokens=1048576 --set pipeline.chunk_tokens=8192 --set output.progress_seconds=0.2
        --set checkpoint.interval_chunks=0 --set checkpoint.at_end=true)
# Absolute directories: pkill finds this job's processes by them (tests may run side by side).
# The log exists before the job starts (the job's own redirection happens after the fork, and
# tail -f would otherwise race it); the job appends to it.
: >stopped.log
"${launcher[@]}" "$driver" "$deck" "${common[@]}" --set output.directory="$PWD/stopped" --set checkpoint.directory="$PWD/stopped/ck" \
  >>stopped.log 2>&1 &
job=$!
# Every rank handles the signal once rank 0 has printed the deck. The signal goes out within
# milliseconds of that line (tail -f follows the log by inotify), well before the last chunk even on
# an H200 (setup and 128 chunks take about 0.3 s there); a polling loop with a sleep came too late.
timeout 60 tail -n +1 -f stopped.log | grep -q -m1 -- "--- resolved deck"
pkill -TERM -f "output.directory=$PWD/stopped" || { echo "no rank to signal"; cat stopped.log; exit 1; }
wait $job
rc=$?
cat stopped.log
if [ "${launcher[*]}" = env ]; then
  [ $rc -eq 143 ] || { echo "expected exit 143 after SIGTERM, got $rc"; exit 1; }
else
  [ $rc -ne 0 ] || { echo "expected a non-zero exit after SIGTERM"; exit 1; }
fi
line=$(grep -E "stopped by SIGTERM after [0-9]+ of 128 chunks; checkpoint written: " stopped.log) ||
  { echo "no stop message"; exit 1; }
ckpt=${line##*--restart }
[ -f "$ckpt" ] || { echo "checkpoint $ckpt missing"; exit 1; }
"${launcher[@]}" "$driver" -q "$deck" "${common[@]}" --set output.directory=resumed --set checkpoint.directory=resumed/ck \
  --restart "$ckpt" >resumed.log 2>&1 || { cat resumed.log; echo "restart failed"; exit 1; }
"${launcher[@]}" "$driver" -q "$deck" "${common[@]}" --set output.directory=whole --set checkpoint.directory=whole/ck \
  >whole.log 2>&1 || { cat whole.log; echo "uninterrupted run failed"; exit 1; }
for f in resumed whole; do summary_key $f.log >$f.key; done
diff resumed.key whole.key || { echo "restart differs from the uninterrupted run"; exit 1; }
echo "stop, checkpoint and restart: ok ($(wc -l <whole.key) summary lines equal)"
