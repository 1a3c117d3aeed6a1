#!/usr/bin/env bash
# disk_full.sh "MPIEXEC [FLAGS]" DRIVER DECK WORKDIR: checkpoints written to a file system that fills up
# during the run (a 480 kB tmpfs, mounted here: needs root; otherwise the test is skipped with
# exit 77). Interval checkpoints of the quickstart deck take 163, 199, 234 and 339 kB, and one is
# kept, so the first two fit and a later one does not. Each case must end within 120 s (no hang)
# with exit 1 (no crash), say which checkpoint was not written and why, and leave the checkpoint
# before it whole: a restart from it must finish with the summary of an uninterrupted run.
#   np1, np2:          the free-space check refuses the checkpoint before anything is written;
#   np1_unchecked:     without that check (PROTEUS_TEST_SKIP_SPACE_CHECK), the write itself fails
#                      (rank 0 builds the file in memory, so the failed write is an ordinary error);
#   np2_unchecked:     the same in a collective (MPI-IO) write: the rank that fails ends the job
#                      (with a serial HDF5 build, rank 0 writes as on one rank).
set -u
source "$(dirname "${BASH_SOURCE[0]}")/run_helpers.sh"
mpiexec=$1 driver=$2 deck=$3 work=$4
rm -rf "$work" && mkdir -p "$work/full" && cd "$work" || exit 1
mount -t tmpfs -o size=480k proteus_disk_full "$PWD/full" 2>/dev/null || { echo "cannot mount a tmpfs: skipped"; exit 77; }
trap 'umount "$work/full"' EXIT
common=(--set checkpoint.interval_chunks=4 --set checkpoint.keep_last=1 --set output.progress_seconds=0)
"$driver" -q "$deck" "${common[@]}" --set output.directory=whole --set checkpoint.directory=whole/ck >whole.log 2>&1 ||
  { cat whole.log; echo "uninterrupted run failed"; exit 1; }
summary_key whole.log >whole.key
failures=0
run_case() {  # name ranks skip-space-check expected-message
  local name=$1 ranks=$2 skip=$3 expect=$4
  rm -rf full/* && mkdir -p "full/$name"
  local env=(env) launch=()
  [ "$skip" = 1 ] && env=(env PROTEUS_TEST_SKIP_SPACE_CHECK=1)
  [ "$ranks" -gt 1 ] && launch=($mpiexec -np "$ranks")
  timeout 120 "${env[@]}" "${launch[@]}" "$driver" -q "$deck" "${common[@]}" --set output.directory="$name" \
    --set checkpoint.directory="full/$name" >"$name.log" 2>&1
  local rc=$? why=""
  [ $rc -eq 124 ] && why="hung (killed after 120 s)"
  [ -z "$why" ] && [ $rc -eq 0 ] && why="exit 0 although the disk is full"
  [ -z "$why" ] && { [ "$ranks" -gt 1 ] || [ $rc -eq 1 ]; } || why=${why:-"exit $rc, expected 1"}
  [ -z "$why" ] && grep -qiE "segmentation|signal 11|core dumped" "$name.log" && why="crashed"
  [ -z "$why" ] && ! grep -q -- "$expect" "$name.log" && why="no message '$expect'"
  local last
  last=$(ls full/"$name"/checkpoint_*.h5 2>/dev/null | tail -1)
  [ -z "$why" ] && [ -z "$last" ] && why="no earlier checkpoint left"
  if [ -z "$why" ]; then
    launch=()
    [ "$ranks" -gt 1 ] && launch=($mpiexec -np "$ranks")
    "${launch[@]}" "$driver" -q "$deck" "${common[@]}" --set output.directory="$name.resumed" \
      --set checkpoint.directory="$name.resumed/ck" --restart "$last" >"$name.resumed.log" 2>&1 ||
      why="restart from $last failed: $(tail -2 "$name.resumed.log")"
  fi
  [ -z "$why" ] && ! diff <(summary_key "$name.resumed.log") whole.key >/dev/null && why="restart differs from the uninterrupted run"
  if [ -n "$why" ]; then
    echo "FAIL $name: $why"
    sed 's/^/    /' "$name.log" | grep -v "^     *#\|major:\|minor:" | head -20
    failures=$((failures + 1))
  else
    echo "ok   $name: exit $rc, $(grep -m1 -o "checkpoint_[0-9]*\.h5: checkpoint not written.*\|error on rank [0-9].*written" "$name.log" | cut -c1-150); restarted from $(basename "$last")"
  fi
}
run_case np1 1 0 "no room for the checkpoint"
run_case np1_unchecked 1 1 "No space left on device"
run_case np2 2 0 "no room for the checkpoint"
run_case np2_unchecked 2 1 "cannot be undone\|No space left on device"
[ $failures -eq 0 ] || exit 1
echo "disk full: 4 of 4 cases ended cleanly, earlier checkpoints intact"
