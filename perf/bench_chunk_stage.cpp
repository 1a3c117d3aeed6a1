// Benchmark of the pipeline's chunk stage, one step at a time: for each step of a chunk (make the
// tokens, NaN check, routing, nucleus, caught count, DNA statistics, copies to the host) the host
// time to launch it, with each chunk queued alone, queued behind the previous one (as run_chunks
// does), and with a wait for the device after every step (the step's device time plus a launch);
// and the first chunk of the process, waited for step by step (each step's first-use costs: buffers,
// module loading, library handles). Chunks as the deck's [pipeline] makes them. Not a test.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <Kokkos_Core.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "proteus/chunk_pipeline.hpp"
#include "proteus/deck.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/dna_chain.hpp"
#include "proteus/multihead_attention.hpp"
#include "proteus/pipeline.hpp"
#include "proteus/sequence_source.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }


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
    // One chunk's buffers, as run_chunks keeps them; two, so that one chunk can be queued behind another.
    struct Buffers {
      RoutingResult routed;
      NucleusBuffers nucleus;
      DnaStatistics stats;
      DnaStatisticsScratch dna_scratch;
      DnaStatisticsHost stats_host;
      Kokkos::View<long*, MemSpace> tallies{"bench::tallies", 3};
      Kokkos::View<long*, detail::PinnedHostSpace> tallies_host{"bench::tallies_host", 3};
      detail::QueueMark<ExecSpace> done;
    } buffers[2];
    for (Buffers& b : buffers) b.stats = DnaStatistics::allocate(deck.model.num_gates, deck.model.embed_dim);
    double const top_p = deck.pipeline.top_p;
    long const budget = deck.pipeline.chunk_budget;
    using Run = std::function<void(ExecSpace const&, long, Buffers&)>;
    std::vector<std::pair<std::string, Run>> const steps = {
        {"read (make tokens)", [&](ExecSpace const& s, long begin, Buffers&) { source->read(s, begin, x); }},
        {"NaN/Inf count",
         [&](ExecSpace const& s, long, Buffers& b) { count_nonfinite(s, x, Kokkos::subview(b.tallies, 0)); }},
        {"route",
         [&](ExecSpace const& s, long, Buffers& b) { scorer.route(s, x, 1, b.routed, Kokkos::subview(b.tallies, 1)); }},
        {"nucleus",
         [&](ExecSpace const& s, long, Buffers& b) {
           start_nucleus(s, b.routed.routing.importance, b.routed.keep, top_p, budget, b.nucleus,
                         b.routed.selection.ranking());
         }},
        {"caught count",
         [&](ExecSpace const& s, long, Buffers& b) {
           auto beta = b.routed.routing.beta;
           Kokkos::parallel_reduce(
               "bench::caught", Kokkos::RangePolicy<ExecSpace>(s, 0, len),
               KOKKOS_LAMBDA(long i, long& n) { n += beta(i) > 0.0f ? 1 : 0; }, Kokkos::subview(b.tallies, 2));
         }},
        {"DNA statistics",
         [&](ExecSpace const& s, long, Buffers& b) {
           dna_statistics(s, x, b.routed.routing.gate_probs, b.stats, b.dna_scratch);
         }},
        {"copies to host",
         [&](ExecSpace const& s, long, Buffers& b) {
           Kokkos::deep_copy(s, b.tallies_host, b.tallies);
           b.stats_host.start_copy(s, b.stats);
         }},
        {"mark", [&](ExecSpace const& s, long, Buffers& b) { b.done.record(s); }},
    };
    long const total_chunks = source->tokens() / len;
    auto chunk_begin = [&](int c) { return (c % total_chunks) * len; };
    enum Mode { queued, pipelined, waited };
    char const* const mode_names[] = {"queued", "pipelined", "with wait"};
    // Host seconds per step and mode, and each mode's wall time, summed over the timed chunks.
    std::vector<std::vector<double>> step_seconds(3, std::vector<double>(steps.size(), 0.0));
    std::vector<double> wall(3, 0.0), waiting(3, 0.0);
    auto launch = [&](Mode m, int c, Buffers& b, bool timed) {
      for (size_t k = 0; k < steps.size(); ++k) {
        auto const ts = Clock::now();
        steps[k].second(space, chunk_begin(c), b);
        if (m == waited) space.fence();
        if (timed) step_seconds[m][k] += seconds_since(ts);
      }
    };
    // First uses before the first chunk, each waited for: what the first chunk's steps would
    // otherwise pay for (library handles, kernel loading, the first allocations).
    std::vector<std::pair<std::string, double>> first_uses;
    auto first_use = [&](std::string const& what, auto&& run) {
      auto const t0 = Clock::now();
      run();
      space.fence();
      first_uses.emplace_back(what, seconds_since(t0));
    };
    Kokkos::View<float**, Kokkos::LayoutRight, MemSpace> small_a, small_b, small_c, wide;
    first_use("allocation, 8x8 x3", [&] {
      small_a = decltype(small_a)("bench::a", 8, 8);
      small_b = decltype(small_b)("bench::b", 8, 8);
      small_c = decltype(small_c)("bench::c", 8, 8);
    });
    first_use("allocation, 64 MiB", [&] { wide = decltype(wide)("bench::wide", 1L << 15, 512); });
    first_use("GEMM 8x8x8 (first)", [&] { detail::gemm(space, "N", "T", 1.0f, small_a, small_b, 0.0f, small_c); });
    first_use("GEMM 8x8x8 (second)", [&] { detail::gemm(space, "N", "T", 1.0f, small_a, small_b, 0.0f, small_c); });
    first_use("GEMM 32768x8x512 (N, T)", [&] {
      Kokkos::View<float**, Kokkos::LayoutRight, MemSpace> p("bench::p", 8, 512), o("bench::o", 1L << 15, 8);
      detail::gemm(space, "N", "T", 1.0f, wide, p, 0.0f, o);
    });
    first_use("sort of 1024 keys", [&] {
      Kokkos::View<std::uint64_t*, MemSpace> keys("bench::keys", 1024);
      Kokkos::View<unsigned char*, MemSpace> scratch;
      detail::sort(space, keys, scratch);
    });
    wide = decltype(wide)();
    // The process's first chunk, each step waited for (the timed modes below count from zero again).
    std::vector<double> first(steps.size());
    auto const t_first = Clock::now();
    launch(waited, 0, buffers[0], true);
    buffers[0].done.wait();
    double const first_wall = seconds_since(t_first);
    first.swap(step_seconds[waited]);
    step_seconds[waited].assign(steps.size(), 0.0);
    for (Mode m : {queued, pipelined, waited}) {
      auto t0 = Clock::now();
      if (m == pipelined) launch(m, 0, buffers[0], false);
      for (int c = 0; c < warmup + chunks; ++c) {
        bool const timed = c >= warmup;
        if (c == warmup) t0 = Clock::now();
        Buffers& b = buffers[c % 2];
        if (m == pipelined)  // chunk c + 1 queued behind chunk c, then a wait for chunk c only
          launch(m, c + 1, buffers[(c + 1) % 2], timed);
        else
          launch(m, c, b, timed);
        auto const tw = Clock::now();
        b.done.wait();
        if (timed) waiting[m] += seconds_since(tw);
      }
      space.fence();
      wall[m] = seconds_since(t0);
    }
    std::printf("bench_chunk_stage: %s, %ld tokens per chunk, E %d, %d gates; %s; mean over %d chunks (us)\n"
                "queued: each chunk launched, then waited for; pipelined: chunk c + 1 launched before the wait for\n"
                "chunk c (as run_chunks does); with wait: a wait after every step; first: the process's first\n"
                "chunk, with a wait after every step (not in the mean). Step columns: host time.\n",
                deck_path.c_str(), len, deck.model.embed_dim, deck.model.num_gates, ExecSpace::name(), chunks);
    std::printf("first uses before the first chunk (us):\n");
    for (auto const& [what, seconds] : first_uses) std::printf("  %-28s %12.1f\n", what.c_str(), 1e6 * seconds);
    std::printf("%-22s %12s %12s %12s %12s\n", "step", mode_names[0], mode_names[1], mode_names[2], "first");
    for (size_t k = 0; k < steps.size(); ++k)
      std::printf("%-22s %12.1f %12.1f %12.1f %12.1f\n", steps[k].first.c_str(), 1e6 * step_seconds[0][k] / chunks,
                  1e6 * step_seconds[1][k] / chunks, 1e6 * step_seconds[2][k] / chunks, 1e6 * first[k]);
    std::printf("%-22s %12.1f %12.1f %12.1f %12s\n", "wait for the chunk", 1e6 * waiting[0] / chunks,
                1e6 * waiting[1] / chunks, 1e6 * waiting[2] / chunks, "-");
    std::printf("%-22s %12.1f %12.1f %12.1f %12.1f\n", "chunk (wall)", 1e6 * wall[0] / chunks, 1e6 * wall[1] / chunks,
                1e6 * wall[2] / chunks, 1e6 * first_wall);
  }
  MPI_Finalize();
  return rc;
}
