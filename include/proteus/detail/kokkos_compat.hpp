// The one seam between Kokkos 3.4 (Debian's Trilinos build) and Kokkos 4.x.
// Nothing else in proteus may test KOKKOS_VERSION: add a wrapper here instead.
#pragma once

#include <Kokkos_Core.hpp>
#include <Kokkos_Sort.hpp>
#include <KokkosBlas2_gemv.hpp>
#include <KokkosBlas3_gemm.hpp>

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

// y = alpha op(A) x + beta y.
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

}  // namespace proteus::detail
