// The optional second pass of the long-context pipeline: every token of the sequence gets an
// output, attending to its local window (the `window` tokens before it, and itself) and to every
// global-buffer token before that window, with RoPE at original positions. Each rank runs its own
// chunks; the buffer (positions and embeddings) is already on every rank.
#pragma once

#include <string>

#include "proteus/buffer_exchange.hpp"
#include "proteus/chunk_grid.hpp"
#include "proteus/multihead_attention.hpp"
#include "proteus/sequence_source.hpp"

namespace proteus {

struct SecondPassResult {
  long tokens = 0;            // outputs computed on this rank
  double sum_of_squares = 0;  // of those outputs (a fingerprint; reduce over ranks)
};

// Runs the chunks of `range` on `grid` with a local window of `window` tokens. `model` must have
// token sparsity off (second_pass_config). Writes this rank's outputs to `outputs_path` (rows in
// position order, atomically) when the path is not empty.
SecondPassResult run_second_pass(ExecSpace const& space, CausalGeneticMultiheadAttention& model,
                                 SequenceSource const& source, GlobalBuffer const& buffer,
                                 TokenMatrix const& buffer_tokens, ChunkGrid const& grid, long window,
                                 ChunkRange range, std::string const& outputs_path);

}  // namespace proteus
