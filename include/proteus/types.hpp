// View aliases for the shapes that flow between the stages. Dimension order is written once here.
#pragma once

#include <cstdint>

#include <Kokkos_Core.hpp>

#include "proteus/detail/bfloat16.hpp"

namespace proteus {

using ExecSpace = Kokkos::DefaultExecutionSpace;
using MemSpace = ExecSpace::memory_space;
using HostSpace = Kokkos::HostSpace;
// True for host backends (Serial, OpenMP, Threads): team kernels run a team as one thread there.
inline constexpr bool on_host = Kokkos::SpaceAccessibility<HostSpace, MemSpace>::accessible;

// The policies every kernel launches with. Light weight: on CUDA and HIP the functor goes to the
// kernel as an argument (up to 4 KB; in global memory above). By default Kokkos copies a functor
// of 512 B to 32 KB into one constant buffer per device, and each such launch first waits on the
// host for the previous one to finish: the host could not queue a call's work ahead of the device
// past any of them. Other backends ignore the hint.
using LightWeight = Kokkos::Experimental::WorkItemProperty::HintLightWeight_t;
using RangePolicy = Kokkos::RangePolicy<ExecSpace, LightWeight>;
template <class... Traits>
using TeamPolicy = Kokkos::TeamPolicy<ExecSpace, LightWeight, Traits...>;

// [tokens x embed]: one row per token (batch rows stacked: row = b*T + t).
using TokenMatrix = Kokkos::View<float**, Kokkos::LayoutRight, MemSpace>;
// The same rows stored in BF16 (keys and values with Config::kv_bf16).
using Bf16Matrix = Kokkos::View<detail::bf16**, Kokkos::LayoutRight, MemSpace>;
// Keys and values in BF16 by head (Config::kv_bf16): [batch*heads x tokens x 2D], the key and then
// the value of head h at token t side by side, a head's tokens one after another. The attention
// reads a (token, head) pair's key and value, so they share 64-byte pieces of memory (D = 16),
// and the keys of a window of tokens lie together.
using Bf16HeadRows = Kokkos::View<detail::bf16***, Kokkos::LayoutRight, MemSpace>;
// [tokens x gates] or [tokens x heads]: per-token probabilities.
using GateMatrix = Kokkos::View<float**, Kokkos::LayoutRight, MemSpace>;
// The same as columns of a wider matrix (the routing GEMM's [tokens x 2 gates]); a GateMatrix
// converts to it.
using GateColumns = Kokkos::View<float**, Kokkos::LayoutStride, MemSpace>;
// [gates x embed]: DNA prototypes, router weights.
using GateByEmbed = Kokkos::View<float**, Kokkos::LayoutRight, MemSpace>;
// [batch x tokens x embed] or [tokens x batch x embed]: the module's public input/output.
using BatchTensor = Kokkos::View<float***, Kokkos::LayoutRight, MemSpace>;
// [gates] (or [heads], [tokens]) of floats.
using GateVector = Kokkos::View<float*, MemSpace>;
using TokenVector = Kokkos::View<float*, MemSpace>;
// Original sequence positions of tokens (RoPE angle, causality of the buffer pass).
using PositionVector = Kokkos::View<std::int64_t*, MemSpace>;
using IndexVector = Kokkos::View<int*, MemSpace>;
using MaskVector = Kokkos::View<std::uint8_t*, MemSpace>;
// [tokens x heads] 0/1: head h is active for token t.
using MaskMatrix = Kokkos::View<std::uint8_t**, Kokkos::LayoutRight, MemSpace>;

using Position = std::int64_t;

// Rounds v >= 0 to the nearest integer, ties to even: the rounding of Python's round() and
// torch.round, so that counts computed from the same formulas agree with upstream exactly.
KOKKOS_INLINE_FUNCTION long round_half_even(double v) {
  long r = static_cast<long>(v);
  double const frac = v - static_cast<double>(r);
  if (frac > 0.5 || (frac == 0.5 && (r % 2) != 0)) ++r;
  return r;
}

}  // namespace proteus
