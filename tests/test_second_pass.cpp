// The second pass of the pipeline: every token attends to its local window and to the global
// buffer tokens before that window, with RoPE at original positions; the same on 1 and N ranks,
// checked row by row against a double-precision reference, with every head at alpha = 0.
#include <cmath>
#include <vector>

#include "pipeline_deck.hpp"
#include "proteus/detail/hdf5_io.hpp"
#include "proteus/multihead_attention.hpp"
#include "proteus/pipeline.hpp"
#include "proteus/sequence_source.hpp"
#include "test_space.hpp"
#include "reference.hpp"
#include "scratch.hpp"

using namespace proteus;
using test::scratch;
using test::small_deck;
using test::world_rank;

namespace {

// Outputs of the one-rank run `one` (written to its output directory) at a few positions against
// double-precision attention over exactly the buffer tokens before each row's window and the
// window itself, at original positions, with every head.
void check_rows_against_reference(RunDeck const& one, RunSummary const& r, long window) {
  detail::H5File f(one.output.directory + "/second_pass_rank0.h5", "r");
  std::vector<std::int64_t> positions;
  std::vector<float> outputs;
  f.read("/positions", {0}, positions);
  f.read("/outputs", {positions.size(), 32}, outputs);
  REQUIRE(static_cast<long>(positions.size()) == one.sequence.tokens);
  CausalGeneticMultiheadAttention model(ExecSpace(), one.model);
  SyntheticSource source(one.sequence, one.model.embed_dim, model.dna());
  auto const& w = model.weights();
  for (Position p : {0L, 47L, 48L, 1023L, 1024L, 5000L, 12345L, 16683L}) {
    std::vector<Position> list;
    for (long b : r.buffer_positions)
      if (b < p - window) list.push_back(b);
    for (Position q = std::max<Position>(0, p - window); q <= p; ++q) list.push_back(q);
    TokenMatrix xl("xl", list.size(), 32);
    source.read_rows(ExecSpace(), list, xl);
    test::Matrix ref = test::attention_reference(
        test::to_host_matrix(xl), std::vector<std::int64_t>(list.begin(), list.end()),
        test::to_host_matrix(w.qkv_weight), test::to_host_vector(w.qkv_bias), test::to_host_matrix(w.out_weight),
        test::to_host_vector(w.out_bias), one.model.num_heads, true, one.model.rope_base,
        [](int, size_t, size_t) { return true; }, [&](int, size_t i) { return i + 1 == list.size(); });
    double num = 0, den = 0;
    for (int e = 0; e < 32; ++e) {
      double const got = outputs[p * 32 + e], want = ref.back()[e];
      num += (got - want) * (got - want);
      den += want * want;
    }
    INFO("position " << p << ", candidates " << list.size());
    CHECK(std::sqrt(num / den) < 1e-5);
  }
}

RunDeck second_pass_deck(std::string const& dir, long window) {
  RunDeck d = small_deck(dir);
  d.sequence.tokens = 16384 + 300;
  d.pipeline.chunk_tokens = 1024;
  d.pipeline.chunk_budget = 64;
  d.pipeline.buffer_tokens = 256;
  d.pipeline.second_pass = true;
  d.pipeline.second_pass_window = window;
  d.checkpoint.at_end = false;
  return d;
}

}  // namespace

PROTEUS_TEST_CASE("the second pass gives every token its window plus the earlier buffer", "[pipeline][second]") {
  std::string const dir = scratch("second");
  long const window = 48;
  auto deck = [&](std::string const& sub) {
    RunDeck d = second_pass_deck(dir + "/" + sub, window);
    d.model.heads_active_min = d.model.num_heads;  // every head active: the reference needs no routing
    d.model.linear_head_k = d.model.num_heads;
    return d;
  };
  RunSummary const s = run_pipeline(TEST_EXECSPACE(), deck("many"), MPI_COMM_WORLD);
  if (world_rank() != 0) return;
  RunDeck const one = deck("one");
  RunSummary const r = run_pipeline(TEST_EXECSPACE(), one, MPI_COMM_SELF);
  CHECK(s.second_pass_tokens == s.tokens);
  CHECK(r.second_pass_tokens == r.tokens);
  CHECK(std::fabs(s.second_pass_norm - r.second_pass_norm) <= 1e-6 * r.second_pass_norm);
  check_rows_against_reference(one, r, window);
}

PROTEUS_TEST_CASE("at alpha = 0 the second pass attends with every head, as the module does", "[pipeline][second][alpha0]") {
  std::string const dir = scratch("second_alpha0");  // collective
  if (world_rank() != 0) return;
  long const window = 48;
  RunDeck d = second_pass_deck(dir, window);
  d.model.mode = AlphaMode::fixed;  // alpha 0 with the default head schedule (K < H per token)
  d.model.alpha = 0.0f;
  RunSummary const r = run_pipeline(TEST_EXECSPACE(), d, MPI_COMM_SELF);
  REQUIRE(r.second_pass_tokens == r.tokens);
  check_rows_against_reference(d, r, window);
}
