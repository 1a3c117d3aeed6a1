// The one seam between Kokkos 3.4 (Debian's Trilinos build) and Kokkos 4.x, and between vendor
// BLAS builds (cuBLAS math modes) and the rest. Nothing else in proteus may test KOKKOS_VERSION
// or the vendor macros: add a wrapper here instead.
#pragma once

#include <KokkosKernels_config.h>

#include <KokkosBlas2_gemv.hpp>
#include <KokkosBlas3_gemm.hpp>
#include <Kokkos_Core.hpp>
#include <Kokkos_Sort.hpp>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "proteus/detail/bfloat16.hpp"

#if defined(KOKKOS_ENABLE_CUDA)
#include <cub/device/device_radix_sort.cuh>
#endif

// TF32 is cuBLAS's math mode on the handle Kokkos Kernels issues its GEMMs through.
#if defined(KOKKOS_ENABLE_CUDA) && defined(KOKKOSKERNELS_ENABLE_TPL_CUBLAS)
#include <KokkosBlas_tpl_spec.hpp>
#define PROTEUS_HAVE_TF32 1
#endif

namespace proteus::detail {

// Math functions callable from kernels: Kokkos::Experimental:: in 3.x, Kokkos:: in 4.x.
namespace kmath {
#if KOKKOS_VERSION >= 40000
using Kokkos::cos;
using Kokkos::exp;
using Kokkos::fabs;
using Kokkos::floor;
using Kokkos::isfinite;
using Kokkos::log;
using Kokkos::pow;
using Kokkos::sin;
using Kokkos::sqrt;
#else
using Kokkos::Experimental::cos;
using Kokkos::Experimental::exp;
using Kokkos::Experimental::fabs;
using Kokkos::Experimental::floor;
using Kokkos::Experimental::isfinite;
using Kokkos::Experimental::log;
using Kokkos::Experimental::pow;
using Kokkos::Experimental::sin;
using Kokkos::Experimental::sqrt;
#endif
}  // namespace kmath

// The number of set bits of a 32-bit word, in kernels: Kokkos::popcount from Kokkos 4.1 (a
// single instruction on GPUs); before that the classic sum of bit fields in parallel.
KOKKOS_INLINE_FUNCTION int popcount(std::uint32_t x) {
#if KOKKOS_VERSION >= 40100
  return Kokkos::popcount(x);
#else
  x = x - ((x >> 1) & 0x55555555u);
  x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
  x = (x + (x >> 4)) & 0x0f0f0f0fu;
  return static_cast<int>((x * 0x01010101u) >> 24);
#endif
}

// C = alpha op(A) op(B) + beta C. Kokkos Kernels 4.x takes the execution space instance;
// 3.4 runs on the default instance, so the caller's stream ordering is kept by fencing it.
template <class Space, class AView, class BView, class CView>
void gemm(Space const& space, char const* trans_a, char const* trans_b, float alpha,
          AView const& a, BView const& b, float beta, CView const& c) {
#if KOKKOS_VERSION >= 40000
  KokkosBlas::gemm(space, trans_a, trans_b, alpha, a, b, beta, c);
#else
  space.fence();
  KokkosBlas::gemm(trans_a, trans_b, alpha, a, b, beta, c);
#endif
}

// y = alpha op(A) x + beta y. Callers zero y even with beta 0: with Kokkos Kernels 3.4 an
// uninitialised y changed the DNA update's results (a driver restart test diverged until zeroed).
template <class Space, class AView, class XView, class YView>
void gemv(Space const& space, char const* trans, float alpha, AView const& a, XView const& x,
          float beta, YView const& y) {
#if KOKKOS_VERSION >= 40000
  KokkosBlas::gemv(space, trans, alpha, a, x, beta, y);
#else
  space.fence();
  KokkosBlas::gemv(trans, alpha, a, x, beta, y);
#endif
}

// Ascending sort of a 1D view of keys.
template <class Space, class View>
void sort(Space const& space, View const& keys) {
#if KOKKOS_VERSION >= 40000
  Kokkos::sort(space, keys);
#else
  space.fence();
  Kokkos::sort(keys);
#endif
}

// The same for callers that sort again and again, with device memory kept between calls in
// `scratch` (grown when too small). On CUDA, Kokkos::sort's thrust call allocates and frees its
// temporary storage and waits for the device on every call (three host waits per sort, measured
// in a training step's trace); cub's radix sort runs on the space's stream with its temporary
// storage and second key buffer in `scratch`, and nothing waits. Elsewhere Kokkos::sort.
template <class Space, class View, class Scratch>
void sort(Space const& space, View const& keys, Scratch& /*scratch*/) {
  sort(space, keys);
}

#if defined(KOKKOS_ENABLE_CUDA)
template <class View, class Scratch>
void sort(Kokkos::Cuda const& space, View const& keys, Scratch& scratch) {
  using Key = typename View::non_const_value_type;
  static_assert(View::rank == 1 && std::is_unsigned_v<Key>, "sort: a 1D view of unsigned integer keys");
  long const n = static_cast<long>(keys.extent(0));
  if (n <= 1) return;
  if (n > std::numeric_limits<int>::max() || !keys.span_is_contiguous()) return sort(space, keys);
  auto const check = [](cudaError_t e) {
    if (e != cudaSuccess)
      throw std::runtime_error(std::string("proteus::sort: cub radix sort: ") + cudaGetErrorString(e));
  };
  cub::DoubleBuffer<Key> buffers(keys.data(), nullptr);
  size_t temp_bytes = 0;
  check(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, buffers, static_cast<int>(n), 0, int(8 * sizeof(Key)),
                                       space.cuda_stream()));
  size_t const key_bytes = (n * sizeof(Key) + 255) / 256 * 256;  // cub wants 256-byte aligned storage
  if (scratch.extent(0) < key_bytes + temp_bytes)
    scratch =
        Scratch(Kokkos::view_alloc(Kokkos::WithoutInitializing, "proteus::sort::scratch"), key_bytes + temp_bytes);
  Key* const spare = reinterpret_cast<Key*>(scratch.data());
  buffers = cub::DoubleBuffer<Key>(keys.data(), spare);
  check(cub::DeviceRadixSort::SortKeys(scratch.data() + key_bytes, temp_bytes, buffers, static_cast<int>(n), 0,
                                       int(8 * sizeof(Key)), space.cuda_stream()));
  if (buffers.Current() == spare)
    Kokkos::deep_copy(space, keys, Kokkos::View<Key*, Kokkos::CudaSpace, Kokkos::MemoryUnmanaged>(spare, n));
}
#endif

// A point in an execution space instance's queue: wait() returns once the work queued before
// record() has finished, whatever was queued after it, so that the host can read one step's
// results while the device runs the next (an event on CUDA; elsewhere wait() waits for the whole
// instance, which is correct and overlaps nothing).
template <class Space>
class QueueMark {
 public:
  void record(Space const& space) { space_ = space; }
  void wait() {
    if (space_) space_->fence();
  }

 private:
  std::optional<Space> space_;
};

#if defined(KOKKOS_ENABLE_CUDA)
template <>
class QueueMark<Kokkos::Cuda> {
 public:
  QueueMark() { check(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~QueueMark() { cudaEventDestroy(event_); }
  QueueMark(QueueMark const&) = delete;
  QueueMark& operator=(QueueMark const&) = delete;
  void record(Kokkos::Cuda const& space) {
    check(cudaEventRecord(event_, space.cuda_stream()));
    recorded_ = true;
  }
  void wait() {
    if (recorded_) check(cudaEventSynchronize(event_));
  }

 private:
  cudaEvent_t event_ = nullptr;
  bool recorded_ = false;
  static void check(cudaError_t e) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("proteus::QueueMark: ") + cudaGetErrorString(e));
  }
};
#endif

// A second instance of the execution space, for copies that overlap kernels (a second stream on
// GPUs). Kokkos 3.4 has no partition_space: the copies then run in order with the kernels.
template <class Space>
Space copy_instance(Space const& space) {
#if KOKKOS_VERSION >= 40000
  return Kokkos::Experimental::partition_space(space, 1)[0];
#else
  return space;
#endif
}

// Host memory the device can copy from asynchronously (pinned on CUDA/HIP).
#if KOKKOS_VERSION >= 40000 && defined(KOKKOS_HAS_SHARED_HOST_PINNED_SPACE)
using PinnedHostSpace = Kokkos::SharedHostPinnedSpace;
#else
using PinnedHostSpace = Kokkos::HostSpace;
#endif

// A profiling region for the lifetime of the object, so that Kokkos Tools (space-time stack,
// NVTX connector) fold time by stage. Kokkos 4.x has Kokkos::Profiling::ScopedRegion; 3.4 has
// only push/pop, which both versions keep, so this one class serves both.
class ScopedRegion {
 public:
  explicit ScopedRegion(std::string const& name) { Kokkos::Profiling::pushRegion(name); }
  ~ScopedRegion() { Kokkos::Profiling::popRegion(); }
  ScopedRegion(ScopedRegion const&) = delete;
  ScopedRegion& operator=(ScopedRegion const&) = delete;
};

// Kokkos::initialize on GPU `device` (host backends ignore it): for a process that did not start
// with Kokkos, such as a Python interpreter that imports the extension.
inline void initialize_on_device(int device) {
#if KOKKOS_VERSION >= 40000
  Kokkos::initialize(Kokkos::InitializationSettings().set_device_id(device));
#else
  Kokkos::InitArguments args;
  args.device_id = device;
  Kokkos::initialize(args);
#endif
}

// Whether Kokkos may start on a thread other than the one that then launches its kernels: host
// backends with a thread pool (OpenMP, Threads, HPX) bind the pool to the thread that started it.
inline constexpr bool kokkos_starts_on_any_thread =
#if defined(KOKKOS_ENABLE_OPENMP) || defined(KOKKOS_ENABLE_THREADS) || defined(KOKKOS_ENABLE_HPX)
    false;
#else
    true;
#endif

// Makes Kokkos' device the calling thread's current one (CUDA and HIP keep the current device per
// host thread), for a thread other than the one that started Kokkos.
inline void use_kokkos_device_here() {
#if defined(KOKKOS_ENABLE_CUDA)
  if (cudaSetDevice(Kokkos::Cuda().cuda_device()) != cudaSuccess)
    throw std::runtime_error("proteus: cudaSetDevice failed for Kokkos' device");
#elif defined(KOKKOS_ENABLE_HIP) && KOKKOS_VERSION >= 40000
  if (hipSetDevice(Kokkos::HIP().hip_device()) != hipSuccess)
    throw std::runtime_error("proteus: hipSetDevice failed for Kokkos' device");
#endif
}

// A GEMM of 8x8 matrices, waited for: the BLAS library's start-up (cuBLAS: its handle and a first
// kernel, 84-93 ms on an H200) paid where the caller chooses rather than in its first real GEMM.
template <class Space>
void start_blas(Space const& space) {
  using Matrix = Kokkos::View<float**, Kokkos::LayoutRight, typename Space::memory_space>;
  Matrix const a("proteus::start_blas::a", 8, 8), b("proteus::start_blas::b", 8, 8), c("proteus::start_blas::c", 8, 8);
  gemm(space, "N", "T", 1.0f, a, b, 0.0f, c);
  space.fence();
}

// True where GEMMs can run with TF32 inputs on tensor cores (CUDA builds calling cuBLAS).
inline bool tf32_gemm_available() {
#ifdef PROTEUS_HAVE_TF32
  return true;
#else
  return false;
#endif
}

// Runs gemm() with cuBLAS's math mode set to TF32 and restores the previous mode afterwards (also
// when gemm throws): cuBLAS reads the mode when a GEMM is issued, so the caller's other GEMMs
// keep theirs. Returns false, running nothing, where TF32 is not available.
template <class Gemm>
bool with_tf32_math(Gemm&& gemm) {
#ifdef PROTEUS_HAVE_TF32
  cublasHandle_t const handle = KokkosBlas::Impl::CudaBlasSingleton::singleton().handle;
  cublasMath_t saved = CUBLAS_DEFAULT_MATH;
  if (cublasGetMathMode(handle, &saved) != CUBLAS_STATUS_SUCCESS ||
      cublasSetMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH) != CUBLAS_STATUS_SUCCESS)
    return false;
  struct Restore {
    cublasHandle_t handle;
    cublasMath_t mode;
    ~Restore() { cublasSetMathMode(handle, mode); }
  } const restore{handle, saved};
  gemm();
  return true;
#else
  (void)gemm;
  return false;
#endif
}

// A float copy of a BF16 matrix (widening is exact).
template <class Space, class Bf16View>
Kokkos::View<float**, Kokkos::LayoutRight, typename Bf16View::memory_space> widened(Space const& space,
                                                                                   Bf16View const& m) {
  long const rows = static_cast<long>(m.extent(0)), cols = static_cast<long>(m.extent(1));
  Kokkos::View<float**, Kokkos::LayoutRight, typename Bf16View::memory_space> f("proteus::widened", rows, cols);
  Kokkos::parallel_for(
      "proteus::widen", Kokkos::RangePolicy<Space>(space, 0, rows * cols),
      KOKKOS_LAMBDA(long i) { f(i / cols, i % cols) = widen(m(i / cols, i % cols)); });
  return f;
}

// C = A B^T with A [n x k] and B [m x k] in BF16 and C [n x m] in float (all LayoutRight, unit
// column stride): products of BF16 values are exact in FP32 and the sums are FP32. CUDA builds
// calling cuBLAS run it on BF16 tensor cores (cublasGemmEx, Kokkos Kernels has no BF16 GEMM);
// elsewhere A and B are widened (exactly) into float copies for the FP32 GEMM, the same result up
// to the order of the sums.
template <class Space, class Bf16View, class FloatView>
void gemm_bf16_nt(Space const& space, Bf16View const& a, Bf16View const& b, FloatView const& c) {
  static_assert(sizeof(typename Bf16View::value_type) == 2, "BF16 operands");
  if (c.extent(0) == 0 || c.extent(1) == 0) return;
#ifdef PROTEUS_HAVE_TF32
  cublasHandle_t const handle = KokkosBlas::Impl::CudaBlasSingleton::singleton().handle;
  cudaStream_t saved = nullptr;
  if (cublasGetStream(handle, &saved) != CUBLAS_STATUS_SUCCESS ||
      cublasSetStream(handle, space.cuda_stream()) != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error("proteus: cuBLAS: cannot set the stream of a BF16 GEMM");
  float const one = 1.0f, zero = 0.0f;
  // Row-major C = A B^T is column-major C^T = B A^T: cuBLAS sees B^T [k x m] and A^T [k x n].
  cublasStatus_t const status = cublasGemmEx(
      handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(c.extent(1)), static_cast<int>(c.extent(0)),
      static_cast<int>(a.extent(1)), &one, b.data(), CUDA_R_16BF, static_cast<int>(b.stride(0)), a.data(), CUDA_R_16BF,
      static_cast<int>(a.stride(0)), &zero, c.data(), CUDA_R_32F, static_cast<int>(c.stride(0)), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT);
  cublasSetStream(handle, saved);
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error("proteus: cuBLAS: cublasGemmEx (BF16) failed with status " + std::to_string(status));
#else
  gemm(space, "N", "T", 1.0f, widened(space, a), widened(space, b), 0.0f, c);
#endif
}

}  // namespace proteus::detail
