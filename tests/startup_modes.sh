#!/usr/bin/env bash
# startup_modes.sh COMMAND...: runs COMMAND (a launcher, proteus_driver and a deck) with
# PROTEUS_STARTUP=sequential, with =overlapped (Kokkos and the BLAS library started on a second
# thread while MPI starts) and with =overlapped and PROTEUS_WARMUP=on (the run's first kernels
# launched once on made-up tokens during the start), and checks that the three runs end well with
# the same results (candidates, needles found, the buffer pass's output norm) and that each reports
# its start-up as it happened. Unknown modes are refused; a deck the run refuses is refused with the
# same message whether or not the start warmed up for it.
set -u
results() { grep -E "^  (candidates|needles found|buffer pass) "; }
declare -A out
declare -A env=([sequential]="PROTEUS_STARTUP=sequential" [overlapped]="PROTEUS_STARTUP=overlapped PROTEUS_WARMUP=off"
                [warm]="PROTEUS_STARTUP=overlapped PROTEUS_WARMUP=on")
for mode in sequential overlapped warm; do
  out[$mode]=$(env ${env[$mode]} "$@" -q --set output.directory=startup_$mode --set checkpoint.at_end=false 2>&1) \
    || { printf '%s\n' "${out[$mode]}"; echo "the $mode start-up run failed"; exit 1; }
  printf '%s\n' "${out[$mode]}" | results > startup_$mode.txt
  [ -s startup_$mode.txt ] || { printf '%s\n' "${out[$mode]}"; echo "no results from the $mode run"; exit 1; }
done
diff startup_sequential.txt startup_overlapped.txt || { echo "sequential and overlapped start-up disagree"; exit 1; }
diff startup_sequential.txt startup_warm.txt || { echo "the warmed-up start disagrees"; exit 1; }
printf '%s\n' "${out[sequential]}" | grep -q "start-up .*MPI .*, then Kokkos" || { echo "no sequential start-up line"; exit 1; }
# A build whose Kokkos has a host thread pool starts in sequence whatever the mode.
printf '%s\n' "${out[overlapped]}" | grep -Eq "start-up .*MPI .*, (alongside Kokkos .*, BLAS [^ ]*; then waited|then Kokkos)" \
  || { echo "no overlapped start-up line"; exit 1; }
printf '%s\n' "${out[warm]}" | grep -Eq "start-up .*MPI .*, (alongside Kokkos .*, BLAS .* and warm-up [0-9.]+s; then|then Kokkos)" \
  || { echo "no warm-up in the start-up line"; exit 1; }
refused() {  # refused VARIABLE=VALUE MESSAGE
  if env "$1" "${@:3}" -q >/dev/null 2>startup_bad.txt; then echo "$1 was accepted"; exit 1; fi
  grep -q "$2" startup_bad.txt || { cat startup_bad.txt; echo "$1: no message '$2'"; exit 1; }
}
refused PROTEUS_STARTUP=sideways "PROTEUS_STARTUP=sideways: expected overlapped or sequential" "$@"
refused PROTEUS_WARMUP=sometimes "PROTEUS_WARMUP=sometimes: expected auto, on or off" "$@"
# A deck that reads but that the model refuses (64 is not divisible by 3 heads): the warm-up gives up.
for w in off on; do
  if PROTEUS_WARMUP=$w "$@" -q --set model.num_heads=3 >/dev/null 2>startup_deck.txt; then
    echo "a deck with num_heads = 3 was accepted (PROTEUS_WARMUP=$w)"; exit 1
  fi
  grep "^proteus_driver: error" startup_deck.txt | sort -u > startup_deck_$w.txt
  grep -q "num_heads 3" startup_deck_$w.txt || { cat startup_deck.txt; echo "no num_heads error"; exit 1; }
done
diff startup_deck_off.txt startup_deck_on.txt || { echo "the warm-up changed a bad deck's error"; exit 1; }
cat startup_warm.txt
echo "the three start-ups give the same run"
