#!/usr/bin/env bash
# On the GPU machine: build proteus against a Kokkos install (unpacked from .gpu/kinstall.tar.gz
# when /tmp/kinstall is missing), run the whole ctest suite, then the benchmarks given as
# arguments ("module", "pipeline"). Logs go to $OUT.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
out=${OUT:-/tmp/out}
mkdir -p "$out"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[ -d /tmp/kinstall ] || tar xzf "$root/.gpu/kinstall.tar.gz" -C /tmp
if ! bash "$root/perf/gpu/build.sh" --kokkos-root /tmp/kinstall --build /tmp/bgpu --jobs 16 >"$out/build.log" 2>&1; then
  grep -E "error" -A3 "$out/build.log" | head -60
  exit 1
fi
echo "== build ok"
bin=/tmp/bgpu/proteus
for step in "$@"; do
  case "$step" in
    ctest)
      (cd "$bin" && ctest -j4 --output-on-failure --timeout 300 >"$out/ctest.log" 2>&1)
      grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest.log" | tail -15 ;;
    module)
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 131072 524288 1048576 \
        --alphas 1.0 --warmup 2 --repeat 5 --csv "$out/module_alpha1.csv" | tee "$out/module.txt" ;;
    profile)
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 1048576 --alphas 1.0 --warmup 1 --repeat 3 \
        --profile | tee "$out/profile.txt" ;;
    module_sweep)
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 512 4096 32768 131072 \
        --alphas 0.0 0.3 1.0 --warmup 1 --repeat 3 --budget 30 --csv "$out/module_sweep.csv" | tee "$out/module_sweep.txt" ;;
    pipeline)
      mkdir -p /tmp/run && cd /tmp/run && "$bin/drivers/proteus_driver" -q "$root/inputs/ctx10m.in" \
        --set checkpoint.at_end=false --set checkpoint.interval_chunks=0 | tee "$out/ctx10m.txt"
      cp /tmp/run/ctx10m_out/summary.json "$out/ctx10m_summary.json" 2>/dev/null ;;
  esac
done
