#!/usr/bin/env bash
# GPU build of proteus in one command. Builds Kokkos and Kokkos Kernels into a prefix when no
# install is there (from sources given, or else from pinned releases it downloads and checks),
# then proteus against them. See docs/gpu.md.
#
#   perf/gpu/build.sh [--backend cuda|hip|openmp|serial] [--arch HOPPER90|AMD_GFX90A|...]
#                     [--prefix DIR] [--build DIR] [--jobs N] [-- CMAKE_ARGS...]
#       no install at --prefix: downloads Kokkos and Kokkos Kernels 4.7.01 (SHA-256 checked) into
#       --fetch-dir (default .gpu/src) and builds them there first
#   perf/gpu/build.sh --kokkos-src DIR --kernels-src DIR ...  # build Kokkos from these sources instead
#   perf/gpu/build.sh --kokkos-root PREFIX [--build DIR]      # use an existing install
#   --kokkos-url URL --kokkos-sha256 HEX, --kernels-url URL --kernels-sha256 HEX: another release or
#   a mirror (file:// works too).
#   --cxx COMPILER: the host C++ compiler (default g++; nvcc_wrapper's host compiler with CUDA). GCC
#   12.2-12.4 miscompile Kokkos develop before July 2025 (kokkos/kokkos#8187): clang++ there.
#   --target NAME (repeatable): build only these targets of proteus (e.g. bench_module,
#   proteus_python_core) where a benchmark needs no test binaries.
#   --compile-only: without the vendor libraries (no cuBLAS/rocBLAS, no rocThrust) and without
#   Kokkos Kernels' explicit instantiations: a build that proves the code compiles for the backend
#   on a machine with the compiler but not the GPU stack (e.g. Debian 12's hipcc 5.2).
#   --kokkos-only: stop once Kokkos and Kokkos Kernels are installed at --prefix (no proteus).
#   --no-eti: Kokkos Kernels without explicit instantiations, vendor BLAS kept: GEMMs still go to
#   cuBLAS/rocBLAS through Kokkos Kernels' headers, and the few other kernels proteus calls are
#   compiled in proteus itself instead of about a thousand instantiation files in Kokkos Kernels.
#
# CUDA: nvcc_wrapper from the Kokkos install compiles everything (Kokkos_ARCH_HOPPER90 for
# H100/H200). HIP: hipcc, e.g. --backend hip --arch AMD_GFX90A (MI210/MI250) or AMD_GFX942 (MI300).
# openmp / serial: host backends with g++ (no --arch), the same flow on a machine without a GPU.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
kokkos_src="" kernels_src="" prefix="$root/.gpu/install" build="$root/build-gpu" backend=cuda arch=""
kokkos_root="" jobs=$(nproc) extra=() targets=() compile_only=0 no_eti=0 kokkos_only=0 fetch_dir="$root/.gpu/src" cxx=g++
# Pinned releases (the SHA-256 of each release tarball as published with the release).
kokkos_version=4.7.01 kernels_version=4.7.01
kokkos_url="https://github.com/kokkos/kokkos/releases/download/$kokkos_version/kokkos-$kokkos_version.tar.gz"
kokkos_sha256=404cf33e76159e83b8b4ad5d86f6899d442b5da4624820ab457412116cdcd201
kernels_url="https://github.com/kokkos/kokkos-kernels/releases/download/$kernels_version/kokkos-kernels-$kernels_version.tar.gz"
kernels_sha256=f3e1452db0e182c8e32c61632465e3a829159b9ae0645d9e4cd97b4fa09c36e1
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
    --target) targets+=(--target "$2"); shift 2 ;;
    --compile-only) compile_only=1; shift ;;
    --no-eti) no_eti=1; shift ;;
    --kokkos-only) kokkos_only=1; shift ;;
    --fetch-dir) fetch_dir=$2; shift 2 ;;
    --cxx) cxx=$2; shift 2 ;;
    --kokkos-url) kokkos_url=$2; shift 2 ;;
    --kokkos-sha256) kokkos_sha256=$2; shift 2 ;;
    --kernels-url) kernels_url=$2; shift 2 ;;
    --kernels-sha256) kernels_sha256=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "build.sh: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
  esac
done
[ "$cxx" = g++ ] || export NVCC_WRAPPER_DEFAULT_COMPILER="$cxx"  # nvcc_wrapper's host compiler
if [ -z "$arch" ]; then
  case "$backend" in cuda) arch=HOPPER90 ;; hip) arch=AMD_GFX90A ;; *) arch=none ;; esac
fi

# Relative paths are taken from the directory the script was called in (CMake gets absolute ones:
# a relative nvcc_wrapper or source directory would be resolved against its build directory).
absolute() { [ -z "$1" ] || (mkdir -p "$(dirname "$1")" && echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"); }
kokkos_src=$(absolute "$kokkos_src") kernels_src=$(absolute "$kernels_src") prefix=$(absolute "$prefix")
build=$(absolute "$build") kokkos_root=$(absolute "$kokkos_root") fetch_dir=$(absolute "$fetch_dir")

# Downloads a release tarball (kept in fetch_dir and reused while its SHA-256 matches), checks it
# and unpacks it into fetch_dir/NAME; prints that directory.
fetch() {
  local name=$1 url=$2 sha256=$3 tarball
  tarball="$fetch_dir/$(basename "$url")"
  mkdir -p "$fetch_dir"
  if ! echo "$sha256  $tarball" | sha256sum -c --status 2>/dev/null; then
    echo "== downloading $name: $url" >&2
    if ! curl -fsSL --retry 3 -o "$tarball.part" "$url"; then
      rm -f "$tarball.part"
      echo "build.sh: error: could not download $url; without network give --kokkos-src and --kernels-src" \
           "(source trees) or --kokkos-root (an install)" >&2
      exit 1
    fi
    mv "$tarball.part" "$tarball"
  fi
  local got
  got=$(sha256sum "$tarball" | cut -d' ' -f1)
  if [ "$got" != "$sha256" ]; then
    echo "build.sh: error: $tarball: SHA-256 $got, expected $sha256 (--${name}-sha256 to accept another)" >&2
    exit 1
  fi
  rm -rf "${fetch_dir:?}/$name"
  mkdir -p "$fetch_dir/$name"
  tar xzf "$tarball" -C "$fetch_dir/$name" --strip-components=1
  echo "$fetch_dir/$name"
}

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
case "$backend" in
  cuda) kokkos_backend=(-DKokkos_ENABLE_CUDA=ON -DKokkos_ENABLE_CUDA_LAMBDA=ON) ; tpl=(-DKokkosKernels_ENABLE_TPL_CUBLAS=ON) ;;
  hip) kokkos_backend=(-DKokkos_ENABLE_HIP=ON) ; tpl=(-DKokkosKernels_ENABLE_TPL_ROCBLAS=ON) ;;
  openmp) kokkos_backend=(-DKokkos_ENABLE_OPENMP=ON) ; tpl=() ;;
  serial) kokkos_backend=() ; tpl=() ;;
  *) echo "build.sh: --backend must be cuda, hip, openmp or serial" >&2; exit 2 ;;
esac
[ "$arch" = none ] || kokkos_backend+=(-DKokkos_ARCH_${arch}=ON)
inst=(-DKokkosKernels_INST_FLOAT=ON -DKokkosKernels_INST_DOUBLE=OFF -DKokkosKernels_INST_LAYOUTRIGHT=ON)
no_inst=(-DKokkosKernels_INST_FLOAT=OFF -DKokkosKernels_INST_DOUBLE=OFF -DKokkosKernels_INST_LAYOUTRIGHT=OFF
         -DKokkosKernels_INST_LAYOUTLEFT=OFF -DKokkosKernels_INST_COMPLEX_FLOAT=OFF -DKokkosKernels_INST_COMPLEX_DOUBLE=OFF
         -DKokkosKernels_INST_OFFSET_SIZE_T=OFF -DKokkosKernels_INST_OFFSET_INT=OFF -DKokkosKernels_INST_ORDINAL_INT=OFF)
[ "$no_eti" = 1 ] && inst=("${no_inst[@]}")
if [ "$compile_only" = 1 ]; then
  tpl=()
  [ "$backend" = hip ] && kokkos_backend+=(-DKokkos_ENABLE_ROCTHRUST=OFF)
  inst=("${no_inst[@]}")
fi

if [ -z "$kokkos_root" ]; then
  kokkos_root=$prefix
  if [ ! -d "$prefix/lib/cmake/Kokkos" ] && [ ! -d "$prefix/lib64/cmake/Kokkos" ]; then
    if [ -z "$kokkos_src" ] || [ -z "$kernels_src" ]; then
      [ -z "$kokkos_src$kernels_src" ] || { echo "build.sh: give both --kokkos-src and --kernels-src, or neither" >&2; exit 2; }
      echo "== no Kokkos install at $prefix: fetching $(basename "$kokkos_url") and $(basename "$kernels_url")"
      kokkos_src=$(fetch kokkos "$kokkos_url" "$kokkos_sha256")
      kernels_src=$(fetch kernels "$kernels_url" "$kernels_sha256")
    fi
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
    compiler=$cxx
    [ "$backend" = cuda ] && compiler="$kokkos_src/bin/nvcc_wrapper"
    [ "$backend" = hip ] && compiler=hipcc
    echo "== Kokkos ($backend, $arch) -> $prefix"
    cmake -S "$kokkos_src" -B "$build/kokkos" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD=17 \
      -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_INSTALL_PREFIX="$prefix" -DKokkos_ENABLE_SERIAL=ON -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
      "${kokkos_backend[@]}" -DKokkos_ENABLE_TESTS=OFF >/dev/null
    cmake --build "$build/kokkos" -j "$jobs" && cmake --install "$build/kokkos" >/dev/null
    what="float, LayoutRight instantiated"
    [ "$no_eti" = 1 ] && what="no instantiations"
    [ "$compile_only" = 1 ] && what="no instantiations, no vendor BLAS"
    echo "== Kokkos Kernels (BLAS, batched; $what) -> $prefix"
    cmake -S "$kernels_src" -B "$build/kernels" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_INSTALL_PREFIX="$prefix" -DKokkos_ROOT="$prefix" -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
      -DKokkosKernels_ENABLE_ALL_COMPONENTS=OFF -DKokkosKernels_ENABLE_COMPONENT_BLAS=ON \
      -DKokkosKernels_ENABLE_COMPONENT_BATCHED=ON "${inst[@]}" -DKokkosKernels_ENABLE_TESTS=OFF "${tpl[@]}" >/dev/null
    cmake --build "$build/kernels" -j "$jobs" && cmake --install "$build/kernels" >/dev/null
  fi
fi
[ "$kokkos_only" = 1 ] && { echo "== Kokkos and Kokkos Kernels installed at $kokkos_root"; exit 0; }

compiler=$cxx
[ "$backend" = cuda ] && [ -x "$kokkos_root/bin/nvcc_wrapper" ] && compiler="$kokkos_root/bin/nvcc_wrapper"
[ "$backend" = hip ] && compiler=hipcc
hdf5=()
# Ubuntu's serial HDF5 lives in a subdirectory that FindHDF5 does not search without its wrapper.
[ -d /usr/include/hdf5/serial ] && hdf5=(-DCMAKE_INCLUDE_PATH=/usr/include/hdf5/serial
                                         -DCMAKE_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/hdf5/serial)
echo "== proteus -> $build/proteus"
cmake -S "$root" -B "$build/proteus" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$compiler" \
  -DKokkos_ROOT="$kokkos_root" -DKokkosKernels_ROOT="$kokkos_root" \
  -DCLI11_ROOT="$root/.gpu" -Dnlohmann_json_ROOT="$root/.gpu" -DCatch2_ROOT="$root/.gpu" "${hdf5[@]}" "${extra[@]}"
cmake --build "$build/proteus" -j "$jobs" "${targets[@]}"
