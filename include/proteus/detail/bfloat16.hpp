// BF16 storage: the top 16 bits of an IEEE float (8 exponent bits, 7 mantissa bits). Values are
// stored in BF16 and widened to float for arithmetic, so sums stay FP32. One struct for every
// backend and Kokkos version (Kokkos 3.4 has no bhalf_t); widening is exact, narrowing rounds to
// nearest with ties to even, as the hardware's conversions do.
#pragma once

#include <cstdint>
#include <cstring>

#include <Kokkos_Core.hpp>

namespace proteus::detail {

struct bf16 {
  std::uint16_t bits;
};

// The nearest BF16 value, ties to the even one; NaN stays a (quiet) NaN, values that round past
// the largest finite BF16 become infinities.
KOKKOS_INLINE_FUNCTION bf16 to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return bf16{static_cast<std::uint16_t>(u >> 16)};
}

KOKKOS_INLINE_FUNCTION float to_float(bf16 b) {
  std::uint32_t const u = static_cast<std::uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Reading a stored element as float, whichever the storage.
KOKKOS_INLINE_FUNCTION float widen(float f) { return f; }
KOKKOS_INLINE_FUNCTION float widen(bf16 b) { return to_float(b); }

}  // namespace proteus::detail
