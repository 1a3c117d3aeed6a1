#!/usr/bin/env bash
# One-command set-up for Debian 12: installs what is missing (apt, with sudo when not root),
# configures and builds proteus, then either runs the quick-start job or the whole test suite.
#   bash tools/setup.sh run    # build + mpirun -np 2 proteus_driver inputs/quickstart.in
#   bash tools/setup.sh test   # build + ctest (unit, MPI, tools, Python) + sanitizer build: unit, MPI and driver tests
# Environment: BUILD_DIR (default build), JOBS (default: number of cores), PROTEUS_SKIP_APT=1.
set -euo pipefail
action=${1:-run}
case "$action" in run|test|build) ;; *) echo "usage: $0 run|test|build" >&2; exit 2 ;; esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
jobs=${JOBS:-$(nproc)}

packages=(build-essential cmake git pkg-config
          libtrilinos-kokkos-dev libtrilinos-kokkos-kernels-dev
          libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
          catch2 libcli11-dev nlohmann-json3-dev python3 python3-h5py python3-matplotlib
          python3-dev python3-torch python3-pytest pybind11-dev  # the PyTorch extension (python/)
          libopenblas0-serial)  # optimised BLAS behind Kokkos Kernels on CPUs (no threads: ranks are the parallelism)
if [ "${PROTEUS_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# Open MPI refuses to start as root unless told; as an ordinary user these do nothing.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1

echo "== configuring ($build)"
# The extension is built against Debian's /usr/bin/python3 (where apt puts python3-torch) unless
# python3 on PATH imports torch; python/CMakeLists.txt picks the interpreter.
# Unity builds (the library's sources compiled in batches of 8): about a minute less on 2 cores.
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPROTEUS_ENABLE_TESTS=ON -DPROTEUS_ENABLE_PYTHON=ON \
      -DCMAKE_UNITY_BUILD=ON -DCMAKE_UNITY_BUILD_BATCH_SIZE=8 >/dev/null
echo "== building with $jobs jobs"
cmake --build "$build" -j "$jobs"

case "$action" in
  run)
    mkdir -p "$build/run"
    cd "$build/run"
    echo "== mpirun -np 2 proteus_driver inputs/quickstart.in"
    mpirun -np 2 "$build/drivers/proteus_driver" "$root/inputs/quickstart.in"
    ;;
  test)
    echo "== ctest"
    (cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 900)
    asan=${build}-asan
    echo "== AddressSanitizer + UndefinedBehaviorSanitizer build: unit, MPI (2 ranks) and driver tests ($asan)"
    # Unity build: the library in 2m32s instead of 3m42s on 2 cores (CI's time budget).
    cmake -S "$root" -B "$asan" -DCMAKE_BUILD_TYPE=Debug -DPROTEUS_ENABLE_SANITIZERS=ON \
          -DPROTEUS_ENABLE_TESTS=ON -DCMAKE_CXX_FLAGS=-O1 -DCMAKE_UNITY_BUILD=ON -DCMAKE_UNITY_BUILD_BATCH_SIZE=8 >/dev/null
    cmake --build "$asan" -j "$jobs" --target proteus_sanitized_tests
    # Open MPI's own allocations are not ours to report.
    (cd "$asan" && ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
       ctest --output-on-failure -L "unit|sanitize" -j "$jobs" --timeout 900)
    ;;
esac
