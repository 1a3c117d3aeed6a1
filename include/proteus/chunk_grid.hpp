// The chunk grid of the long-context pipeline, as one value: chunk c covers tokens
// [c L, min((c + 1) L, T)), and rank r of P owns the contiguous chunks [C r / P, C (r + 1) / P).
// The chunk stage, the second pass, the checkpoint and the conductor all ask this one value, so
// the arithmetic of the grid lives here only.
#pragma once

#include <algorithm>

#include "proteus/types.hpp"

namespace proteus {

// Global chunk ids [first, last).
struct ChunkRange {
  long first = 0, last = 0;
  long size() const { return last - first; }
};

struct ChunkGrid {
  long tokens = 0;        // T
  long chunk_tokens = 1;  // L

  long count() const { return (tokens + chunk_tokens - 1) / chunk_tokens; }
  Position begin(long chunk) const { return chunk * chunk_tokens; }
  // Tokens of chunk c (the last chunk may be short).
  long extent(long chunk) const { return std::min(chunk_tokens, tokens - begin(chunk)); }
  // Tokens in chunks [first, last).
  long tokens_in(long first, long last) const {
    return std::min(tokens, last * chunk_tokens) - std::min(tokens, first * chunk_tokens);
  }
  ChunkRange chunks_of_rank(int rank, int ranks) const {
    return {count() * rank / ranks, count() * (rank + 1) / ranks};
  }
  // The most chunks any rank owns (every rank runs this many checkpoint rounds' worth).
  long most_chunks_per_rank(int ranks) const { return (count() + ranks - 1) / ranks; }
};

}  // namespace proteus
