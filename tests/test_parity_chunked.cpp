// Parity with upstream's chunked shortlist pipeline (tools/chunked_shortlist.py) on a run recorded
// by tools/reference/record_chunked.py on the GPU machine: 65,536 tokens in chunks of 8,192, the
// runner's own chunk model (token keep 0.05, DNA threshold 0.2 / blend 0.5 / temperature 0.3),
// nucleus top-p 0.9, a buffer of 1,024 tokens. proteus runs the same weights, DNA and tokens with
// a deck that states upstream's settings.
//
// Frozen DNA (upstream's EMA decay set to 1): every chunk is scored with the same DNA, which is our
// pipeline's rule, so every chunk's importance, token mask and candidates and the final buffer
// must be upstream's. ctest runs this on 1, 2 and 4 ranks.
// Evolving DNA (upstream's default): upstream scores chunk c with the DNA after c + 1 EMA updates
// (its warm-up call included), ours with the DNA of the run start (rank-count independent, SPEC
// "Our decisions"). Given upstream's DNA of the moment, our scorer picks upstream's candidates in
// every chunk, and our EMA step on a chunk equals upstream's: the DNA schedule is the only
// difference.
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "parity_helpers.hpp"
#include "proteus/checkpoint.hpp"
#include "proteus/chunk_pipeline.hpp"
#include "proteus/detail/hdf5_io.hpp"
#include "proteus/pipeline.hpp"
#include "proteus/sequence_source.hpp"
#include "test_space.hpp"
#include "scratch.hpp"

using namespace proteus;
using detail::H5File;
using test::mismatches;
using test::scaled_error;
using test::to_host;

namespace {

std::string const recorded = std::string(PROTEUS_PARITY_DIR) + "/chunked/t65536_c8192.h5";

// Our pipeline with the upstream runner's settings (the file's /chunked attributes).
RunDeck upstream_deck(H5File const& f, std::string const& dir) {
  auto number = [&](char const* key) { return f.attr_double("/chunked", key); };
  auto integer = [&](char const* key) { return f.attr_int("/chunked", key); };
  RunDeck d;
  d.path = recorded;
  d.model.embed_dim = static_cast<int>(integer("embed_dim"));
  d.model.num_heads = static_cast<int>(integer("num_heads"));
  d.model.num_gates = static_cast<int>(integer("num_gates"));
  d.model.bias = false;
  d.model.mode = AlphaMode::linear;  // upstream's chunk model: attn_mode "linear"
  d.model.dna_threshold = static_cast<float>(number("dna_threshold"));
  d.model.dna_blend = static_cast<float>(number("dna_blend"));
  d.model.dna_temperature = static_cast<float>(number("dna_temperature"));
  d.model.token_keep_guard = static_cast<int>(integer("token_keep_guard"));
  d.sequence.source = "hdf5";
  d.sequence.file = recorded;
  d.sequence.dataset = "/chunked/x";
  d.pipeline.chunk_tokens = integer("chunk_tokens");
  d.pipeline.chunk_keep_ratio = number("chunk_keep_ratio");
  d.pipeline.top_p = number("top_p");
  d.pipeline.chunk_budget = integer("chunk_budget");
  d.pipeline.buffer_tokens = integer("buffer_tokens");
  d.pipeline.buffer_pass = false;  // upstream's run_final_pass = False
  d.checkpoint.weights = recorded;
  d.checkpoint.at_end = false;
  d.checkpoint.directory = dir + "/checkpoints";
  d.output.directory = dir + "/out";
  d.output.progress_seconds = 1e6;
  return d;
}

// The DNA upstream held before chunk c: row c of /chunked/<run>/dna_before.
DnaState recorded_dna(H5File const& f, std::string const& run, long c, int gates, int embed) {
  std::string const g = "/chunked/" + run + "/dna_before/";
  std::vector<float> p, u, k;
  auto const dims = f.read(g + "prototypes", {0, hsize_t(gates), hsize_t(embed)}, p);
  f.read(g + "usage", {dims[0], hsize_t(gates)}, u);
  f.read(g + "confidence", {dims[0], hsize_t(gates)}, k);
  REQUIRE(c < static_cast<long>(dims[0]));
  DnaState dna = DnaState::allocate(gates, embed);
  auto hp = Kokkos::create_mirror_view(dna.prototypes);
  auto hu = Kokkos::create_mirror_view(dna.usage);
  auto hk = Kokkos::create_mirror_view(dna.confidence);
  for (int i = 0; i < gates; ++i) {
    for (int e = 0; e < embed; ++e) hp(i, e) = p[(c * gates + i) * embed + e];
    hu(i) = u[c * gates + i];
    hk(i) = k[c * gates + i];
  }
  Kokkos::deep_copy(dna.prototypes, hp);
  Kokkos::deep_copy(dna.usage, hu);
  Kokkos::deep_copy(dna.confidence, hk);
  return dna;
}

// Upstream's candidates of one run, chunk by chunk (nucleus order: best score first).
struct RecordedCandidates {
  std::vector<std::vector<Position>> positions;
  std::vector<std::vector<float>> scores;
};

RecordedCandidates recorded_candidates(H5File const& f, std::string const& run) {
  std::vector<std::int64_t> counts, positions;
  std::vector<float> scores;
  f.read("/chunked/" + run + "/candidate_counts", {0}, counts);
  f.read("/chunked/" + run + "/candidate_positions", {0}, positions);
  f.read("/chunked/" + run + "/candidate_scores", {positions.size()}, scores);
  RecordedCandidates out;
  size_t at = 0;
  for (std::int64_t n : counts) {
    out.positions.emplace_back(positions.begin() + at, positions.begin() + at + n);
    out.scores.emplace_back(scores.begin() + at, scores.begin() + at + n);
    at += n;
  }
  REQUIRE(at == positions.size());
  return out;
}

bool same_tokens(Candidates const& ours, std::vector<Position> const& theirs) {
  return std::set<Position>(ours.positions.begin(), ours.positions.end()) ==
         std::set<Position>(theirs.begin(), theirs.end());
}

// Our scores of the tokens `at`, in that order (0 where we did not pick the token).
std::vector<double> scores_at(Candidates const& ours, std::vector<Position> const& at) {
  std::map<Position, double> score;
  for (size_t i = 0; i < ours.size(); ++i) score[ours.positions[i]] = ours.scores[i];
  std::vector<double> out;
  for (Position p : at) out.push_back(score.count(p) ? score[p] : 0.0);
  return out;
}

// Token rows [begin, begin + rows) of the recorded sequence on the device.
TokenMatrix chunk_tokens(ExecSpace const& space, Hdf5Source const& source, long begin, long rows) {
  TokenMatrix x("x", rows, source.embed_dim());
  source.read(space, begin, x);
  return x;
}

}  // namespace

PROTEUS_TEST_CASE("upstream's chunked pipeline with frozen DNA: the same candidates in every chunk and the same buffer",
          "[parity][chunked]") {
  H5File f(recorded, "r");
  RunDeck const deck = upstream_deck(f, test::scratch("parity_chunked"));
  PipelineSpec const& spec = deck.pipeline;
  TEST_EXECSPACE space;
  long const T = f.attr_int("/chunked", "tokens"), L = spec.chunk_tokens;
  REQUIRE(T % L == 0);
  // Upstream's chunk model also keeps at least token_keep_min tokens (ours: no such floor); with
  // round(0.05 L) tokens kept per full chunk that floor never binds here.
  REQUIRE(round_half_even(spec.chunk_keep_ratio * L) > f.attr_int("/chunked", "token_keep_min"));

  // Stage by stage, chunk by chunk: importance, token mask, nucleus candidates.
  CausalGeneticMultiheadAttention scorer(TEST_EXECSPACE(), chunk_scorer_config(deck.model, deck.pipeline));
  load_model(space, recorded, scorer);
  Hdf5Source const source(recorded, "/chunked/x");
  std::vector<float> importance;
  std::vector<std::int32_t> token_mask;
  f.read("/chunked/frozen/importance", {hsize_t(T)}, importance);
  f.read("/chunked/frozen/token_mask", {hsize_t(T)}, token_mask);
  RecordedCandidates const theirs = recorded_candidates(f, "frozen");
  REQUIRE(static_cast<long>(theirs.positions.size()) == T / L);
  for (long c = 0; c < T / L; ++c) {
    INFO("chunk " << c);
    RoutingResult const r = scorer.route(space, chunk_tokens(space, source, c * L, L), 1);
    std::vector<float> const ref_importance(importance.begin() + c * L, importance.begin() + (c + 1) * L);
    std::vector<std::int32_t> const ref_mask(token_mask.begin() + c * L, token_mask.begin() + (c + 1) * L);
    CHECK(scaled_error(to_host(r.routing.importance), ref_importance) < 1e-4);
    CHECK(mismatches(to_host(r.keep), ref_mask) == 0);
    Candidates const ours = nucleus_candidates(space, r.routing.importance, r.keep, c * L, spec.top_p, spec.chunk_budget);
    // The same set of tokens (their order, best first, may swap tokens whose scores agree to the
    // last bit or two: upstream scored on the GPU), each with upstream's score.
    CHECK(same_tokens(ours, theirs.positions[c]));
    CHECK(scaled_error(scores_at(ours, theirs.positions[c]), theirs.scores[c]) < 1e-4);
  }

  // The whole pipeline, from the deck: HDF5 source, chunks split over the ranks, global buffer.
  RunSummary const run = run_pipeline(TEST_EXECSPACE(), deck, MPI_COMM_WORLD);
  std::vector<std::int64_t> buffer;
  f.read("/chunked/frozen/buffer_positions", {hsize_t(spec.buffer_tokens)}, buffer);
  size_t offered = 0;
  for (auto const& p : theirs.positions) offered += p.size();
  CHECK(run.candidates == static_cast<long>(offered));
  CHECK(run.buffer_positions == std::vector<long>(buffer.begin(), buffer.end()));
  if (test::world_rank() == 0)
    std::printf("chunked parity (frozen DNA, %d ranks): %ld candidates, buffer of %zu matches upstream's\n",
                test::world_size(), run.candidates, run.buffer_positions.size());
}

PROTEUS_TEST_CASE("upstream's chunked pipeline with evolving DNA differs from ours only by the DNA schedule",
          "[parity][chunked]") {
  H5File f(recorded, "r");
  RunDeck const deck = upstream_deck(f, test::scratch("parity_chunked_evolving"));
  PipelineSpec const& spec = deck.pipeline;
  TEST_EXECSPACE space;
  long const T = f.attr_int("/chunked", "tokens"), L = spec.chunk_tokens, chunks = T / L;
  int const G = deck.model.num_gates, E = deck.model.embed_dim;
  RecordedCandidates const theirs = recorded_candidates(f, "evolving");
  Hdf5Source const source(recorded, "/chunked/x");
  CausalGeneticMultiheadAttention scorer(TEST_EXECSPACE(), chunk_scorer_config(deck.model, deck.pipeline));
  load_model(space, recorded, scorer);

  // Scored with the DNA upstream held at that chunk, every chunk gives upstream's candidates.
  for (long c = 0; c < chunks; ++c) {
    INFO("chunk " << c);
    scorer.set_dna(space, recorded_dna(f, "evolving", c, G, E));
    RoutingResult const r = scorer.route(space, chunk_tokens(space, source, c * L, L), 1);
    Candidates const ours = nucleus_candidates(space, r.routing.importance, r.keep, c * L, spec.top_p, spec.chunk_budget);
    CHECK(same_tokens(ours, theirs.positions[c]));
  }

  // Our rule: every chunk scored with the DNA of the run start (upstream's DNA before chunk 0).
  DnaState const start = recorded_dna(f, "evolving", 0, G, E);
  scorer.set_dna(space, start);
  RankState state;
  state.dna.reset(G, E);
  run_chunks(space, scorer, source, ChunkGrid{source.tokens(), spec.chunk_tokens}, NucleusSpec{spec.top_p, spec.chunk_budget}, {0, chunks}, state, [](RankState const&) {});
  std::set<Position> const ours(state.candidates.positions.begin(), state.candidates.positions.end());
  long same = 0, total = 0;
  for (long c = 0; c < chunks; ++c) {
    for (Position p : theirs.positions[c]) same += ours.count(p);
    total += static_cast<long>(theirs.positions[c].size());
  }
  std::vector<Position> const first(state.candidates.positions.begin(),
                                    state.candidates.positions.begin() + theirs.positions[0].size());
  CHECK(std::set<Position>(first.begin(), first.end()) ==
        std::set<Position>(theirs.positions[0].begin(), theirs.positions[0].end()));  // chunk 0: the same DNA
  CHECK(same < total);                  // later chunks: upstream's DNA has moved on
  if (test::world_rank() == 0)
    std::printf("chunked parity (evolving DNA): %ld of %ld upstream candidates also ours (%.1f%%)\n", same, total,
                100.0 * same / total);

  // One EMA step on chunk 0's statistics is upstream's update (its DNA before chunk 1).
  RankState one;
  one.dna.reset(G, E);
  scorer.set_dna(space, start);
  run_chunks(space, scorer, source, ChunkGrid{source.tokens(), spec.chunk_tokens}, NucleusSpec{spec.top_p, spec.chunk_budget}, {0, 1}, one, [](RankState const&) {});
  DnaState const after = combine_dna(space, MPI_COMM_SELF, one.dna, start, deck.model.dna_decay);
  DnaState const upstream_after = recorded_dna(f, "evolving", 1, G, E);
  CHECK(scaled_error(to_host(after.prototypes), test::to_host_float(upstream_after.prototypes)) < 1e-4);
  CHECK(scaled_error(to_host(after.usage), test::to_host_float(upstream_after.usage)) < 1e-4);
  CHECK(scaled_error(to_host(after.confidence), test::to_host_float(upstream_after.confidence)) < 1e-4);
}
