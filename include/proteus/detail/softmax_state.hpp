// The running state of an online softmax over one attention row: candidates are added one at a
// time (running maximum, running sum, rescaled accumulator), and states over disjoint parts of
// a row's candidates merge into the state over their union. The attention kernel deals a row's
// candidates out to GPU vector lanes and merges the lanes' states with the reducer below.
#pragma once

#include <Kokkos_Core.hpp>

#include <cmath>

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/types.hpp"

namespace proteus::detail {

// D >= d accumulator entries; entries past d stay zero.
template <int D>
struct SoftmaxState {
  float m, l;  // running maximum of the scores, sum of exp(score - m)
  int seen;    // candidates added
  float acc[D];  // sum of exp(score - m) * value

  KOKKOS_INLINE_FUNCTION void clear() {
    m = -INFINITY;
    l = 0.0f;
    seen = 0;
    for (int j = 0; j < D; ++j) acc[j] = 0.0f;
  }

  KOKKOS_INLINE_FUNCTION void add(float score, float const (&value)[D]) {
    float w = 1.0f;
    if (score > m) {
      float const shrink = kmath::exp(m - score);
      l *= shrink;
      for (int j = 0; j < D; ++j) acc[j] *= shrink;
      m = score;
    } else {
      w = kmath::exp(score - m);
    }
    l += w;
    for (int j = 0; j < D; ++j) acc[j] += w * value[j];
    ++seen;
  }

  // This state over the union of its candidates and other's (disjoint); an empty state (m = -inf,
  // l = 0) leaves the other unchanged.
  KOKKOS_INLINE_FUNCTION void merge(SoftmaxState const& other) {
    float const top = m > other.m ? m : other.m;
    float const a = l > 0.0f ? kmath::exp(m - top) : 0.0f;
    float const b = other.l > 0.0f ? kmath::exp(other.m - top) : 0.0f;
    m = top;
    l = l * a + other.l * b;
    seen += other.seen;
    for (int j = 0; j < D; ++j) acc[j] = acc[j] * a + other.acc[j] * b;
  }
};

// A Kokkos reducer over a state with clear() and merge() (SoftmaxState, LaneSum), for
// parallel_reduce over a ThreadVectorRange: the lanes' states of one row merged into one.
template <class State>
struct MergeLanes {
  using reducer = MergeLanes;
  using value_type = State;
  using result_view_type = Kokkos::View<value_type, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>;
  value_type& value;
  KOKKOS_INLINE_FUNCTION MergeLanes(value_type& v) : value(v) {}
  KOKKOS_INLINE_FUNCTION void init(value_type& s) const { s.clear(); }
  KOKKOS_INLINE_FUNCTION void join(value_type& dst, value_type const& src) const { dst.merge(src); }
  KOKKOS_INLINE_FUNCTION value_type& reference() const { return value; }
  KOKKOS_INLINE_FUNCTION result_view_type view() const { return result_view_type(&value); }
};
template <int D>
using MergeSoftmax = MergeLanes<SoftmaxState<D>>;

// D floats summed over lanes (a row's gradient, one part per lane).
template <int D>
struct LaneSum {
  float v[D];
  KOKKOS_INLINE_FUNCTION void clear() {
    for (int j = 0; j < D; ++j) v[j] = 0.0f;
  }
  KOKKOS_INLINE_FUNCTION void merge(LaneSum const& other) {
    for (int j = 0; j < D; ++j) v[j] += other.v[j];
  }
};

// Lanes per row: on GPUs a row's candidates are dealt out to a vector of lanes, so that a block
// of 32 rows keeps 32 x lanes threads busy (rows alone are too few below ~1M tokens); the wider
// the row state, the fewer lanes. Host backends use one lane.
template <int D>
constexpr int lanes_per_row() {
  if (on_host) return 1;
  return D <= 32 ? 8 : D <= 64 ? 4 : 1;
}

// The first of c0, c0 + 1, ... that lane `lane` of `lanes` takes (key c goes to lane c % lanes).
KOKKOS_INLINE_FUNCTION long first_of_lane(long c0, int lane, int lanes) {
  return c0 + ((lane - c0 % lanes) % lanes + lanes) % lanes;
}

}  // namespace proteus::detail
