// The small deck the pipeline tests start from (E 32, 4 heads, 66k tokens with a short last
// chunk, 6 needles), writing under `dir`.
#pragma once

#include <string>

#include "proteus/deck.hpp"

namespace proteus::test {

inline RunDeck small_deck(std::string const& dir) {
  RunDeck d;
  d.path = dir + "/deck.in";
  d.model.embed_dim = 32;
  d.model.num_heads = 4;
  d.model.seed = 3;
  d.sequence.tokens = 65536 + 1000;  // a short last chunk
  d.sequence.needles = 6;
  d.pipeline.chunk_tokens = 2048;
  d.pipeline.chunk_budget = 200;
  d.pipeline.buffer_tokens = 1024;
  d.checkpoint.directory = dir + "/checkpoints";
  d.output.directory = dir + "/out";
  d.output.write_outputs = true;
  d.output.progress_seconds = 1e6;
  return d;
}

}  // namespace proteus::test
