// BF16 storage (detail/bfloat16.hpp): narrowing against an independent rounding in double (the
// two neighbouring BF16 values and the distance to each, ties to the even one), on the host and
// in the execution space, and widening exactly.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <Kokkos_Core.hpp>

#include "proteus/types.hpp"
#include "test_space.hpp"

using namespace proteus;
using detail::bf16;

namespace {

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// The BF16 value with these 16 bits, in double; the pattern just past the largest finite one
// stands for 2^128, where rounding with an unbounded exponent would land before overflowing.
double value_of(std::uint16_t bits) {
  if ((bits & 0x7FFFu) == 0x7F80u) return (bits & 0x8000u ? -1.0 : 1.0) * std::ldexp(1.0, 128);
  return static_cast<double>(from_bits(static_cast<std::uint32_t>(bits) << 16));
}

// Round to nearest, ties to even, by comparing distances in double (exact for floats).
std::uint16_t reference_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  auto const below = static_cast<std::uint16_t>(u >> 16);  // toward zero
  if (std::isinf(f) || (u & 0xFFFFu) == 0) return below;
  auto const above = static_cast<std::uint16_t>(below + 1);  // away from zero, same sign
  double const x = f, lo = std::fabs(x - value_of(below)), hi = std::fabs(value_of(above) - x);
  if (lo < hi) return below;
  if (hi < lo) return above;
  return below % 2 == 0 ? below : above;
}

}  // namespace

TEST_CASE("BF16 narrowing rounds to nearest, ties to even; widening is exact", "[bfloat16]") {
  std::vector<std::uint32_t> patterns = {
      0x00000000u, 0x80000000u, 0x3F800000u, 0xBF800000u,  // +-0, +-1
      0x3F808000u, 0x3F818000u, 0x3F808001u, 0x3F807FFFu,  // ties to even (down, up), just above/below a tie
      0x00000001u, 0x00008000u, 0x00018000u, 0x807FFFFFu,  // subnormals and ties among them
      0x7F7F7FFFu, 0x7F7F8000u, 0x7F7FFFFFu, 0xFF7FFFFFu,  // near the largest finite: stays, ties up to inf
      0x7F800000u, 0xFF800000u};                           // infinities
  std::mt19937_64 rng(5);
  for (int i = 0; i < 200000; ++i) patterns.push_back(static_cast<std::uint32_t>(rng()));
  long wrong = 0, nan_wrong = 0;
  for (std::uint32_t u : patterns) {
    float const f = from_bits(u);
    bf16 const b = detail::to_bf16(f);
    if (std::isnan(f)) {
      nan_wrong += std::isnan(detail::to_float(b)) ? 0 : 1;
      continue;
    }
    if (b.bits != reference_bits(f)) {
      if (wrong++ < 5)
        WARN("to_bf16 of bits " << std::hex << u << " gave " << b.bits << ", want " << reference_bits(f));
    }
  }
  CHECK(wrong == 0);
  CHECK(nan_wrong == 0);
  CHECK(detail::to_bf16(from_bits(0x7F7F8000u)).bits == 0x7F80u);  // the tie above the largest finite: inf
  // Every BF16 value widens to the float with the same top bits and narrows back to itself.
  long round_trip = 0;
  for (std::uint32_t bits = 0; bits <= 0xFFFFu; ++bits) {
    float const f = detail::to_float(bf16{static_cast<std::uint16_t>(bits)});
    if (std::isnan(f)) continue;
    round_trip += detail::to_bf16(f).bits == bits ? 0 : 1;
  }
  CHECK(round_trip == 0);
}

PROTEUS_TEST_CASE("BF16 narrowing in the execution space agrees with the host", "[bfloat16]") {
  long const n = 1 << 16;
  Kokkos::View<float*, MemSpace> x("x", n);
  Kokkos::View<std::uint16_t*, MemSpace> bits("bits", n);
  auto hx = Kokkos::create_mirror_view(x);
  std::mt19937_64 rng(9);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (long i = 0; i < n; ++i) hx(i) = normal(rng);
  Kokkos::deep_copy(x, hx);
  Kokkos::parallel_for(
      "test::to_bf16", Kokkos::RangePolicy<TEST_EXECSPACE>(TEST_EXECSPACE(), 0, n),
      KOKKOS_LAMBDA(long i) { bits(i) = detail::to_bf16(x(i)).bits; });
  auto hb = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), bits);
  long wrong = 0;
  for (long i = 0; i < n; ++i) wrong += hb(i) == reference_bits(hx(i)) ? 0 : 1;
  CHECK(wrong == 0);
}
