// 64-bit sort keys that order (score descending, position ascending) under an ascending sort,
// so that top-k selections are deterministic with ties broken by position.
#pragma once

#include <cstdint>
#include <cstring>

#include <Kokkos_Core.hpp>

namespace proteus::detail {

// Order-preserving map of a float onto uint32 (larger float -> larger integer; NaN excluded).
KOKKOS_INLINE_FUNCTION std::uint32_t orderable_bits(float score) {
  std::uint32_t u;
  std::memcpy(&u, &score, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Positions must be below 2^32 (4.29e9 tokens).
KOKKOS_INLINE_FUNCTION std::uint64_t descending_score_key(float score, std::uint64_t position) {
  return (static_cast<std::uint64_t>(~orderable_bits(score)) << 32) | (position & 0xFFFFFFFFull);
}

KOKKOS_INLINE_FUNCTION std::uint64_t key_position(std::uint64_t key) { return key & 0xFFFFFFFFull; }

KOKKOS_INLINE_FUNCTION float key_score(std::uint64_t key) {
  std::uint32_t u = ~static_cast<std::uint32_t>(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
  float s;
  std::memcpy(&s, &u, sizeof(s));
  return s;
}

}  // namespace proteus::detail
