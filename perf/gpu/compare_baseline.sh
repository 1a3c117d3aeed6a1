#!/usr/bin/env bash
# On the GPU machine: the module and pipeline benchmarks of this tree and of a baseline tree
# (e.g. `git archive REV | tar -x -C .gpu/old`), built against the same Kokkos install and run
# one after the other in the same call, so that a refactoring can be shown to stay within noise.
#   perf/gpu/compare_baseline.sh BASELINE_DIR [KOKKOS_ROOT]
# Needs proteus built for this tree in /tmp/bgpu (device_check.sh or build.sh). Every table and
# log goes to $OUT/compare.tar.gz, the summary to stdout and $OUT/compare.txt. COMPARE_PROFILE=1
# adds each kernel's time at 1M tokens (bench_module --profile), FP32 and TF32 with BF16 K|V.
# Shorter calls: COMPARE_TOKENS (default "4096 32768 131072 524288 1048576"), COMPARE_ARGS (more
# bench_module arguments, e.g. "--tf32 --kv-bf16"), COMPARE_PIPELINE=0 (no ctx10m.in). Timing on an
# H200: the baseline's build about 80 s, a round of both trees with the defaults about 100 s.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
final=${OUT:-/tmp/out}
out=/tmp/compare
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
base=$(cd "$1" && pwd)
kokkos=${2:-/tmp/kinstall}
mkdir -p "$out" "$final"
# The baseline's own build script, with this tree's header-only dependencies.
bash "$base/perf/gpu/build.sh" --kokkos-root "$kokkos" --build /tmp/bbase --jobs "$(nproc)" -- \
  -DPROTEUS_ENABLE_TESTS=OFF -DCLI11_ROOT="$root/.gpu" -DCatch2_ROOT="$root/.gpu" >"$out/build_base.log" 2>&1 ||
  { grep -E "error" -A3 "$out/build_base.log" | head -30; exit 1; }
bench() {  # bench NAME BUILD: upstream's tinytoy shape, token sparsity on, alpha 1
  local tokens=${COMPARE_TOKENS:-4096 32768 131072 524288 1048576}
  # shellcheck disable=SC2086  # the token list and COMPARE_ARGS are word lists
  "$2/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens $tokens --alphas 1.0 --warmup 2 --repeat 5 \
    --token-sparse ${COMPARE_ARGS:-} --csv "$out/module_$1.csv" >"$out/module_$1.txt" 2>&1
  if [ "${COMPARE_PIPELINE:-1}" != 0 ]; then
    mkdir -p "/tmp/run_$1" && (cd "/tmp/run_$1" && "$2/drivers/proteus_driver" -q "$root/inputs/ctx10m.in" \
      --set checkpoint.at_end=false --set checkpoint.interval_chunks=0 >"$out/ctx10m_$1.txt" 2>&1)
  fi
  [ -n "${COMPARE_PROFILE:-}" ] || return 0
  for p in "" "--tf32 --kv-bf16"; do
    # shellcheck disable=SC2086  # $p: zero or two arguments
    "$2/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 1048576 --alphas 1.0 --warmup 1 --repeat 3 \
      --token-sparse --profile $p
  done >"$out/profile_$1.txt" 2>&1
}
# Twice each, interleaved, so that drift of the machine shows as spread rather than as a difference.
for round in 1 2; do
  bench "base$round" /tmp/bbase/proteus
  bench "head$round" /tmp/bgpu/proteus
done
{
  for f in "$out"/module_*.txt; do echo "== $(basename "$f")"; grep -E "^ *[0-9]+ " "$f" | head -8; done
  grep -H -E "total|time " "$out"/ctx10m_*.txt 2>/dev/null
  for f in "$out"/profile_*.txt; do
    [ -f "$f" ] && echo "== $(basename "$f")" && grep -E "^ +1048576 |hybrid_route|select_heads|head_probs|\(all" "$f"
  done
} | tee "$final/compare.txt"
tar czf "$final/compare.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"
