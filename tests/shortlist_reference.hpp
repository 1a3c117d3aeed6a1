// The candidate set of a row by brute force, from the rule documented in shortlist.hpp and
// written independently of the kernels' for_each_candidate: the reference of the shortlist and
// attention tests.
#pragma once

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "proteus/shortlist.hpp"

namespace proteus::test {

// Brute force of the documented rule: window, clamped anchors, DNA = the dna_cap most salient
// rows before the block start (ties: lower row first), all <= i.
inline std::vector<long> brute_candidates(ShortlistPlan const& p, long i, std::vector<float> const& salience) {
  std::set<long> s;
  for (long j = std::max(0L, i - p.local_width + 1); j <= i; ++j) s.insert(j);
  if (p.anchor_stride > 0)
    for (long j = 1; j <= p.anchor_cap; ++j) s.insert(std::max(0L, i - j * p.anchor_stride));
  if (p.dna_cap > 0) {
    long const start = (i / p.dna_block) * p.dna_block;
    std::vector<long> order(start);
    std::iota(order.begin(), order.end(), 0L);
    std::stable_sort(order.begin(), order.end(), [&](long a, long b) { return salience[a] > salience[b]; });
    for (long n = 0; n < std::min<long>(p.dna_cap, start); ++n) s.insert(order[n]);
  }
  return {s.begin(), s.end()};
}

}  // namespace proteus::test
