// Benchmark of the pipeline's chunk stage, one step at a time: for each step of a chunk (make the
// tokens, NaN check, routing, nucleus, caught count, DNA statistics, copies to the host) the host
// time to launch it with nothing waiting, and its time with a wait for the device after it. The
// first says whether the host can queue a chunk faster than the device runs it; the second is the
// step's device time plus one launch. Chunks as the deck's [pipeline] makes them. Not a test.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <Kokkos_Core.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "proteus/chunk_pipeline.hpp"
#include "proteus/deck.hpp"
#include "proteus/dna_chain.hpp"
#include "proteus/multihead_attention.hpp"
#include "proteus/pipeline.hpp"
#include "proteus/sequence_source.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Step {
  std::string name;
  std::function<void(proteus::ExecSpace const&, long)> run;  // chunk's first token
  double queued = 0, waited = 0;                               // seconds summed over the timed chunks
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  {
    Kokkos::ScopeGuard guard(argc, argv);
    std::string deck_path = "inputs/ctx10m.in";
    int chunks = 20, warmup = 3;
    CLI::App app{"bench_chunk_stage: host launch time and device time of each step of a pipeline chunk"};
    app.add_option("deck", deck_path, "input deck (its [model], [sequence] and [pipeline])")->check(CLI::ExistingFile);
    app.add_option("--chunks", chunks, "timed chunks");
    app.add_option("--warmup", warmup, "untimed chunks first");
    CLI11_PARSE(app, argc, argv);
    using namespace proteus;
    ExecSpace space;
    RunDeck const deck = read_deck(deck_path);
    CausalGeneticMultiheadAttention const model(space, deck.model);
    CausalGeneticMultiheadAttention const scorer =
        model_like(space, model, chunk_scorer_config(deck.model, deck.pipeline), model.dna());
    auto const source = make_source(deck.sequence, deck.model.embed_dim, model.dna(), ".");
    long const len = deck.pipeline.chunk_tokens;
    TokenMatrix x("bench::tokens", len, deck.model.embed_dim);
    RoutingResult routed;
    NucleusBuffers nucleus;
    DnaStatistics stats = DnaStatistics::allocate(deck.model.num_gates, deck.model.embed_dim);
    DnaStatisticsScratch dna_scratch;
    DnaStatisticsHost stats_host;
    Kokkos::View<long*, MemSpace> tallies("bench::tallies", 3);
    Kokkos::View<long*, detail::PinnedHostSpace> tallies_host("bench::tallies_host", 3);
    auto tally = [&](int k) { return Kokkos::subview(tallies, k); };
    double const top_p = deck.pipeline.top_p;
    long const budget = deck.pipeline.chunk_budget;
    std::vector<Step> steps = {
        {"read (make tokens)", [&](ExecSpace const& s, long begin) { source->read(s, begin, x); }},
        {"NaN/Inf count", [&](ExecSpace const& s, long) { count_nonfinite(s, x, tally(0)); }},
        {"route", [&](ExecSpace const& s, long) { scorer.route(s, x, 1, routed, tally(1)); }},
        {"nucleus",
         [&](ExecSpace const& s, long) {
           start_nucleus(s, routed.routing.importance, routed.keep, top_p, budget, nucleus);
         }},
        {"caught count",
         [&](ExecSpace const& s, long) {
           auto beta = routed.routing.beta;
           Kokkos::parallel_reduce(
               "bench::caught", Kokkos::RangePolicy<ExecSpace>(s, 0, len),
               KOKKOS_LAMBDA(long i, long& n) { n += beta(i) > 0.0f ? 1 : 0; }, tally(2));
         }},
        {"DNA statistics",
         [&](ExecSpace const& s, long) { dna_statistics(s, x, routed.routing.gate_probs, stats, dna_scratch); }},
        {"copies to host",
         [&](ExecSpace const& s, long) {
           Kokkos::deep_copy(s, tallies_host, tallies);
           stats_host.start_copy(s, stats);
         }},
    };
    long const total_chunks = source->tokens() / len;
    auto chunk_begin = [&](int c) { return (c % total_chunks) * len; };
    // Queued: every step launched, one wait at the end (as run_chunks does).
    double queued_wall = 0, waited_wall = 0;
    for (int c = 0; c < warmup + chunks; ++c) {
      bool const timed = c >= warmup;
      auto const t0 = Clock::now();
      for (Step& st : steps) {
        auto const ts = Clock::now();
        st.run(space, chunk_begin(c));
        if (timed) st.queued += seconds_since(ts);
      }
      space.fence();
      if (timed) queued_wall += seconds_since(t0);
    }
    // Waited: a wait after every step.
    for (int c = 0; c < warmup + chunks; ++c) {
      bool const timed = c >= warmup;
      auto const t0 = Clock::now();
      for (Step& st : steps) {
        auto const ts = Clock::now();
        st.run(space, chunk_begin(c));
        space.fence();
        if (timed) st.waited += seconds_since(ts);
      }
      if (timed) waited_wall += seconds_since(t0);
    }
    std::printf("bench_chunk_stage: %s, %ld tokens per chunk, E %d, %d gates; %s; mean over %d chunks (us)\n",
                deck_path.c_str(), len, deck.model.embed_dim, deck.model.num_gates, ExecSpace::name(), chunks);
    std::printf("%-22s %12s %12s\n", "step", "launch", "with wait");
    for (Step const& st : steps)
      std::printf("%-22s %12.1f %12.1f\n", st.name.c_str(), 1e6 * st.queued / chunks, 1e6 * st.waited / chunks);
    std::printf("%-22s %12.1f %12.1f\n", "chunk (wall)", 1e6 * queued_wall / chunks, 1e6 * waited_wall / chunks);
  }
  MPI_Finalize();
  return rc;
}
