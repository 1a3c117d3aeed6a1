// Counter-based random numbers: value i of stream s under seed k is a pure function of (k, s, i).
// Weights, DNA initialisation and synthetic tokens use it, so they are the same on every backend
// and every rank count, and any rank can make any slice of a sequence by itself.
#pragma once

#include <cstdint>

#include <Kokkos_Core.hpp>

#include "proteus/detail/kokkos_compat.hpp"

namespace proteus::detail {

// SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
KOKKOS_INLINE_FUNCTION std::uint64_t mix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// hash3 in two steps, for kernels that draw many values of one stream: the key of (seed, stream)
// once, then one mix per value. hash3(seed, stream, i) == hash_at(stream_key(seed, stream), i).
KOKKOS_INLINE_FUNCTION std::uint64_t stream_key(std::uint64_t seed, std::uint64_t stream) {
  return mix64(mix64(seed) ^ stream);
}
KOKKOS_INLINE_FUNCTION std::uint64_t hash_at(std::uint64_t key, std::uint64_t index) { return mix64(key ^ index); }

KOKKOS_INLINE_FUNCTION std::uint64_t hash3(std::uint64_t seed, std::uint64_t stream,
                                           std::uint64_t index) {
  return hash_at(stream_key(seed, stream), index);
}

// Uniform in (0, 1), never 0 or 1.
KOKKOS_INLINE_FUNCTION double uniform_open01(std::uint64_t bits) {
  return (static_cast<double>(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// Standard normal (Box-Muller on two counter-based uniforms) of the stream with key stream_key().
KOKKOS_INLINE_FUNCTION double standard_normal_at(std::uint64_t key, std::uint64_t index) {
  double const u1 = uniform_open01(hash_at(key, 2 * index));
  double const u2 = uniform_open01(hash_at(key, 2 * index + 1));
  return detail::kmath::sqrt(-2.0 * detail::kmath::log(u1)) *
         detail::kmath::cos(6.283185307179586 * u2);
}

// Standard normals in single precision, two per 64-bit hash: Box-Muller on the 24-bit uniforms u1
// (bits 40-63) and u2 (bits 16-39) of hash_at(key, p) gives entry 2p (r cos 2 pi u2) and entry
// 2p + 1 (r sin 2 pi u2) of the stream, r = sqrt(-2 log u1). For bulk data (synthetic tokens): GPUs'
// FP64 and 64-bit integer rates are low. |z| < 5.9.
struct NormalPair {
  float even, odd;
};
KOKKOS_INLINE_FUNCTION NormalPair standard_normal_pair_at(std::uint64_t key, std::uint64_t pair) {
  std::uint64_t const bits = hash_at(key, pair);
  float const u1 = (static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f);
  float const u2 = (static_cast<float>((bits >> 16) & 0xFFFFFFu) + 0.5f) * (1.0f / 16777216.0f);
  float const r = detail::kmath::sqrt(-2.0f * detail::kmath::log(u1)), angle = 6.28318531f * u2;
  return {r * detail::kmath::cos(angle), r * detail::kmath::sin(angle)};
}
// Entry `index` of the same stream.
KOKKOS_INLINE_FUNCTION float standard_normal_float_at(std::uint64_t key, std::uint64_t index) {
  NormalPair const z = standard_normal_pair_at(key, index / 2);
  return index % 2 == 0 ? z.even : z.odd;
}

// Standard normal: value `index` of stream `stream` under `seed`.
KOKKOS_INLINE_FUNCTION double standard_normal(std::uint64_t seed, std::uint64_t stream,
                                              std::uint64_t index) {
  return standard_normal_at(stream_key(seed, stream), index);
}

// Streams used by the library (one per tensor), so that changing one shape leaves the others.
enum RandomStream : std::uint64_t {
  stream_qkv_weight = 1,
  stream_qkv_bias = 2,
  stream_out_weight = 3,
  stream_out_bias = 4,
  stream_router = 5,
  stream_prototypes = 6,
  stream_tokens = 100,
  stream_needles = 101,
};

}  // namespace proteus::detail
