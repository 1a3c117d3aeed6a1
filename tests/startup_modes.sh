#!/usr/bin/env bash
# startup_modes.sh COMMAND...: runs COMMAND (a launcher, proteus_driver and a deck) once with
# PROTEUS_STARTUP=sequential and once with =overlapped (Kokkos and the BLAS library started on a
# second thread while MPI starts) and checks that both runs end well with the same results
# (candidates, needles found, the buffer pass's output norm), and that each reports its start-up
# as it happened; an unknown mode is refused.
set -u
results() { grep -E "^  (candidates|needles found|buffer pass) "; }
declare -A out
for mode in sequential overlapped; do
  out[$mode]=$(PROTEUS_STARTUP=$mode "$@" -q --set output.directory=startup_$mode --set checkpoint.at_end=false 2>&1) \
    || { printf '%s\n' "${out[$mode]}"; echo "the $mode start-up run failed"; exit 1; }
  printf '%s\n' "${out[$mode]}" | results > startup_$mode.txt
  [ -s startup_$mode.txt ] || { printf '%s\n' "${out[$mode]}"; echo "no results from the $mode run"; exit 1; }
done
diff startup_sequential.txt startup_overlapped.txt || { echo "the start-up modes disagree"; exit 1; }
printf '%s\n' "${out[sequential]}" | grep -q "start-up .*MPI .*, then Kokkos" || { echo "no sequential start-up line"; exit 1; }
printf '%s\n' "${out[overlapped]}" | grep -Eq "start-up .*MPI .*, (alongside Kokkos .* and BLAS|then Kokkos)" \
  || { echo "no overlapped start-up line"; exit 1; }
if PROTEUS_STARTUP=sideways "$@" -q >/dev/null 2>startup_bad.txt; then echo "PROTEUS_STARTUP=sideways was accepted"; exit 1; fi
grep -q "PROTEUS_STARTUP=sideways: expected sequential or overlapped" startup_bad.txt || { cat startup_bad.txt; exit 1; }
cat startup_overlapped.txt
echo "both start-up modes give the same run"
