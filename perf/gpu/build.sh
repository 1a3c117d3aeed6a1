#!/usr/bin/env bash
# GPU build of proteus. Builds Kokkos and Kokkos Kernels from source into a prefix when no
# install is given, then proteus against them. See docs/gpu.md.
#
#   perf/gpu/build.sh --kokkos-src DIR --kernels-src DIR [--prefix DIR] [--build DIR]
#                     [--backend cuda|hip] [--arch HOPPER90|AMD_GFX90A|...] [--jobs N]
#   perf/gpu/build.sh --kokkos-root PREFIX [--build DIR]      # use an existing install
#   --compile-only: without the vendor libraries (no cuBLAS/rocBLAS, no rocThrust) and without
#   Kokkos Kernels' explicit instantiations: a build that proves the code compiles for the backend
#   on a machine with the compiler but not the GPU stack (e.g. Debian 12's hipcc 5.2).
#
# CUDA: nvcc_wrapper from the Kokkos install compiles everything (Kokkos_ARCH_HOPPER90 for
# H100/H200). HIP: hipcc, e.g. --backend hip --arch AMD_GFX90A (MI210/MI250) or AMD_GFX942 (MI300).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
kokkos_src="" kernels_src="" prefix="$root/.gpu/install" build="$root/build-gpu" backend=cuda arch=HOPPER90
kokkos_root="" jobs=$(nproc) extra=() compile_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kokkos-src) kokkos_src=$2; shift 2 ;;
    --kernels-src) kernels_src=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --kokkos-root) kokkos_root=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --compile-only) compile_only=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

# Relative paths are taken from the directory the script was called in (CMake gets absolute ones:
# a relative nvcc_wrapper or source directory would be resolved against its build directory).
absolute() { [ -z "$1" ] || (mkdir -p "$(dirname "$1")" && echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"); }
kokkos_src=$(absolute "$kokkos_src") kernels_src=$(absolute "$kernels_src") prefix=$(absolute "$prefix")
build=$(absolute "$build") kokkos_root=$(absolute "$kokkos_root")

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
case "$backend" in
  cuda) kokkos_backend=(-DKokkos_ENABLE_CUDA=ON -DKokkos_ENABLE_CUDA_LAMBDA=ON) ; tpl=(-DKokkosKernels_ENABLE_TPL_CUBLAS=ON) ;;
  hip) kokkos_backend=(-DKokkos_ENABLE_HIP=ON) ; tpl=(-DKokkosKernels_ENABLE_TPL_ROCBLAS=ON) ;;
  *) echo "backend must be cuda or hip" >&2; exit 2 ;;
esac
inst=(-DKokkosKernels_INST_FLOAT=ON -DKokkosKernels_INST_DOUBLE=OFF -DKokkosKernels_INST_LAYOUTRIGHT=ON)
if [ "$compile_only" = 1 ]; then
  tpl=()
  [ "$backend" = hip ] && kokkos_backend+=(-DKokkos_ENABLE_ROCTHRUST=OFF)
  inst=(-DKokkosKernels_INST_FLOAT=OFF -DKokkosKernels_INST_DOUBLE=OFF -DKokkosKernels_INST_LAYOUTRIGHT=OFF
        -DKokkosKernels_INST_LAYOUTLEFT=OFF -DKokkosKernels_INST_COMPLEX_FLOAT=OFF -DKokkosKernels_INST_COMPLEX_DOUBLE=OFF
        -DKokkosKernels_INST_OFFSET_SIZE_T=OFF -DKokkosKernels_INST_OFFSET_INT=OFF -DKokkosKernels_INST_ORDINAL_INT=OFF)
fi

if [ -z "$kokkos_root" ]; then
  kokkos_root=$prefix
  if [ ! -d "$prefix/lib/cmake/Kokkos" ] && [ ! -d "$prefix/lib64/cmake/Kokkos" ]; then
    [ -n "$kokkos_src" ] && [ -n "$kernels_src" ] || { echo "no install at $prefix: give --kokkos-src and --kernels-src" >&2; exit 2; }
    # CUDA 13 changed two runtime signatures that Kokkos 4.6 calls (graph edges gained an edge-data
    # argument; prefetch takes a cudaMemLocation and flags). Patch them when building with CUDA 13+.
    cuda_instance="$kokkos_src/core/src/Cuda/Kokkos_Cuda_Instance.hpp"
    if [ "$backend" = cuda ] && [ -f "$cuda_instance" ] && ! grep -q "proteus: CUDA 13" "$cuda_instance"; then
      python3 - "$cuda_instance" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace("    return cudaGraphAddDependencies(graph, from, to, numDependencies);",
"""#if CUDART_VERSION >= 13000  // proteus: CUDA 13
    return cudaGraphAddDependencies(graph, from, to, nullptr, numDependencies);
#else
    return cudaGraphAddDependencies(graph, from, to, numDependencies);
#endif""")
s = s.replace("    return cudaMemPrefetchAsync(devPtr, count, dstDevice, m_stream);",
"""#if CUDART_VERSION >= 13000  // proteus: CUDA 13
    cudaMemLocation location{};
    location.type = cudaMemLocationTypeDevice;
    location.id = dstDevice;
    return cudaMemPrefetchAsync(devPtr, count, location, 0, m_stream);
#else
    return cudaMemPrefetchAsync(devPtr, count, dstDevice, m_stream);
#endif""")
open(p, "w").write(s)
PY
    fi
    # nvcc_wrapper's fallback target (sm_70) is gone from CUDA 13: default to the chosen chip, so
    # that CMake's compiler checks (which pass no -arch) work too.
    if [ "$backend" = cuda ]; then
      sm=$(echo "$arch" | sed 's/[^0-9]//g')
      sed -i "s/^default_arch=\"sm_[0-9]*\"/default_arch=\"sm_${sm}\"/" "$kokkos_src/bin/nvcc_wrapper"
    fi
    compiler=g++
    [ "$backend" = cuda ] && compiler="$kokkos_src/bin/nvcc_wrapper"
    [ "$backend" = hip ] && compiler=hipcc
    echo "== Kokkos ($backend, $arch) -> $prefix"
    cmake -S "$kokkos_src" -B "$build/kokkos" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD=17 \
      -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_INSTALL_PREFIX="$prefix" -DKokkos_ENABLE_SERIAL=ON -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
      "${kokkos_backend[@]}" -DKokkos_ARCH_${arch}=ON -DKokkos_ENABLE_TESTS=OFF >/dev/null
    cmake --build "$build/kokkos" -j "$jobs" && cmake --install "$build/kokkos" >/dev/null
    what="float, LayoutRight instantiated"
    [ "$compile_only" = 1 ] && what="no instantiations, no vendor BLAS"
    echo "== Kokkos Kernels (BLAS, batched; $what) -> $prefix"
    cmake -S "$kernels_src" -B "$build/kernels" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_INSTALL_PREFIX="$prefix" -DKokkos_ROOT="$prefix" -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
      -DKokkosKernels_ENABLE_ALL_COMPONENTS=OFF -DKokkosKernels_ENABLE_COMPONENT_BLAS=ON \
      -DKokkosKernels_ENABLE_COMPONENT_BATCHED=ON "${inst[@]}" -DKokkosKernels_ENABLE_TESTS=OFF "${tpl[@]}" >/dev/null
    cmake --build "$build/kernels" -j "$jobs" && cmake --install "$build/kernels" >/dev/null
  fi
fi

compiler=g++
[ -x "$kokkos_root/bin/nvcc_wrapper" ] && compiler="$kokkos_root/bin/nvcc_wrapper"
[ "$backend" = hip ] && compiler=hipcc
hdf5=()
# Ubuntu's serial HDF5 lives in a subdirectory that FindHDF5 does not search without its wrapper.
[ -d /usr/include/hdf5/serial ] && hdf5=(-DCMAKE_INCLUDE_PATH=/usr/include/hdf5/serial
                                         -DCMAKE_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/hdf5/serial)
echo "== proteus -> $build/proteus"
cmake -S "$root" -B "$build/proteus" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$compiler" \
  -DKokkos_ROOT="$kokkos_root" -DKokkosKernels_ROOT="$kokkos_root" \
  -DCLI11_ROOT="$root/.gpu" -Dnlohmann_json_ROOT="$root/.gpu" -DCatch2_ROOT="$root/.gpu" "${hdf5[@]}" "${extra[@]}"
cmake --build "$build/proteus" -j "$jobs"
