// Benchmark of the drop-in module: forward latency (median of repeats after warm-up) and peak
// memory of Kokkos allocations, over sequence lengths and alpha values. Prints a table and
// optionally writes a CSV. Not a test: numbers go to perf/RESULTS.md.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <Kokkos_Core.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>

#include "proteus/memory_tracker.hpp"
#include "proteus/multihead_attention.hpp"
#include "proteus/random.hpp"
#include "proteus/version.hpp"
#include "kernel_timer.hpp"

namespace {

struct Options {
  std::vector<long> tokens{1024, 4096, 16384, 65536};
  std::vector<double> alphas{0.0, 0.3, 1.0};
  int embed = 128, heads = 8, gates = 0, batch = 1, warmup = 1, repeat = 5;
  bool dna_update = false, token_sparse = false, profile = false, tf32 = false, bf16 = false, kv_bf16 = false,
       memory = false;
  double budget_seconds = 60.0;  // skip a row predicted to take longer than this
  std::string csv;
  bool backward = false, defer_statistics = false;
  int heads_active_min = 0, linear_head_k = 0, linear_L = 0, kv_stage_rows = 0;  // 0: Config's default
};

void fill(proteus::BatchTensor const& x, std::uint64_t seed) {
  auto flat = Kokkos::View<float*, proteus::MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(x.data(), x.size());
  Kokkos::parallel_for("bench::fill", Kokkos::RangePolicy<proteus::ExecSpace>(0, x.size()), KOKKOS_LAMBDA(long i) {
    flat(i) = static_cast<float>(proteus::detail::standard_normal(seed, 9, static_cast<std::uint64_t>(i)));
  });
}

}  // namespace

int main(int argc, char** argv) {
  // Line by line into a pipe as well: a run killed by a time limit still shows how far it got.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  MPI_Init(&argc, &argv);
  int rc = 0;
  {
    Kokkos::ScopeGuard guard(argc, argv);
    Options o;
    CLI::App app{"bench_module: latency and memory of CausalGeneticMultiheadAttention"};
    app.add_option("--tokens", o.tokens, "sequence lengths");
    app.add_option("--alphas", o.alphas, "alpha values (mode fixed)");
    app.add_option("--embed", o.embed, "embedding width");
    app.add_option("--heads", o.heads, "heads");
    app.add_option("--gates", o.gates, "gates (0 = auto)");
    app.add_option("--batch", o.batch, "batch");
    app.add_option("--warmup", o.warmup, "untimed runs first");
    app.add_option("--repeat", o.repeat, "timed runs (median reported)");
    app.add_flag("--dna-update", o.dna_update, "let the DNA EMA run on every call (default: frozen)");
    app.add_flag("--token-sparse", o.token_sparse, "token sparsity on (upstream's tinytoy does this)");
    app.add_flag("--tf32", o.tf32, "projection GEMMs on TF32 tensor cores (CUDA + cuBLAS builds)");
    app.add_flag("--bf16", o.bf16, "projection GEMMs with BF16 inputs and FP32 sums (BF16 tensor cores with cuBLAS)");
    app.add_flag("--kv-bf16", o.kv_bf16, "keys and values stored in BF16 for the attention");
    app.add_option("--kv-stage-rows", o.kv_stage_rows,
                   "Config::kv_stage_rows: with --kv-bf16, K|V rows projected in "
                   "FP32 at a time (0: the default)")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--budget", o.budget_seconds, "skip rows predicted to take longer (s)");
    app.add_option("--csv", o.csv, "write the table as CSV here");
    app.add_flag("--backward", o.backward,
                  "time a training step of the module: run_training + backward (dy = 1e-3), instead of forward");
    app.add_flag("--defer-statistics", o.defer_statistics,
                 "with --backward: the forward leaves its statistics on the device (RunOptions::defer_statistics), "
                 "read after the timed step, as the Python extension does");
    app.add_option("--heads-active-min", o.heads_active_min, "Config::heads_active_min (every head: --heads)")
        ->check(CLI::PositiveNumber);
    app.add_option("--linear-head-k", o.linear_head_k, "Config::linear_head_k, heads per token at alpha 1")
        ->check(CLI::PositiveNumber);
    app.add_option("--linear-L", o.linear_L, "Config::linear_L, candidates per query at alpha 1")->check(CLI::PositiveNumber);
    app.add_flag("--profile", o.profile, "time every Kokkos kernel of the timed runs (adds fences)");
    app.add_flag("--memory", o.memory, "list the allocations alive at the peak (bytes per token)");
    CLI11_PARSE(app, argc, argv);
    proteus::detail::track_memory();
    if (o.memory) proteus::detail::record_live_allocations();
    if (o.profile) proteus::perf::install_kernel_timer();
    std::printf(
        "# proteus %s (%s), %s, E=%d H=%d B=%d, dna_update=%d token_sparse=%d tf32=%d "
        "bf16=%d kv_bf16=%d kv_stage_rows=%d%s\n",
        PROTEUS_VERSION_STRING, PROTEUS_GIT_COMMIT, proteus::ExecSpace::name(), o.embed, o.heads, o.batch, o.dna_update,
        o.token_sparse, o.tf32, o.bf16, o.kv_bf16,
        o.kv_stage_rows > 0 ? o.kv_stage_rows : proteus::Config().kv_stage_rows,
        o.backward ? ", training step (forward + backward)" : "");
    std::printf("%9s %6s %10s %4s %8s %12s %12s %10s %10s %6s\n", "T", "alpha", "mode", "K", "L", "median_ms",
                "tokens_per_s", "peak_MB", "cand/row", "kept");
    std::ofstream csv;
    if (!o.csv.empty()) {
      csv.open(o.csv);
      csv << "device,tokens,alpha,mode,heads_k,budget,median_ms,tokens_per_s,peak_mb,mean_candidates,kept_fraction\n";
    }
    std::map<double, std::pair<long, double>> last;  // alpha -> (T, seconds) for the skip rule
    for (long T : o.tokens)
      for (double alpha : o.alphas) {
        if (last.count(alpha)) {
          auto [t0, s0] = last[alpha];
          double const growth = alpha == 0.0 ? double(T) * T / (double(t0) * t0) : double(T) / t0 * (alpha < 1 ? 2 : 1);
          if (s0 * growth * (o.warmup + o.repeat) > o.budget_seconds) {
            std::printf("%9ld %6.2f %10s  skipped (predicted %.0f s per call)\n", T, alpha, "-", s0 * growth);
            continue;
          }
        }
        proteus::Config cfg;
        cfg.mode = proteus::AlphaMode::fixed;
        cfg.alpha = static_cast<float>(alpha);
        cfg.num_gates = o.gates;
        cfg.dna_update = o.dna_update;
        cfg.token_sparse = o.token_sparse;
        cfg.tf32_projections = o.tf32;
        cfg.bf16_projections = o.bf16;
        cfg.kv_bf16 = o.kv_bf16;
        cfg.seed = 1;
        if (o.heads_active_min > 0) cfg.heads_active_min = o.heads_active_min;
        if (o.linear_head_k > 0) cfg.linear_head_k = o.linear_head_k;
        if (o.linear_L > 0) cfg.linear_L = o.linear_L;
        if (o.kv_stage_rows > 0) cfg.kv_stage_rows = o.kv_stage_rows;
        proteus::BatchTensor x("bench::x", o.batch, T, o.embed);
        fill(x, 5);
        proteus::detail::reset_peak_memory();
        double const base_mb = proteus::detail::current_memory_mb();
        proteus::CausalGeneticMultiheadAttention mha(proteus::ExecSpace(), o.embed, o.heads, true, cfg);
        std::vector<double> times;
        proteus::ForwardStats st;
        // Training step buffers (allocated once, outside the timed calls).
        long const n = static_cast<long>(o.batch) * T;
        proteus::TokenMatrix const xt(x.data(), n, o.embed);
        proteus::TokenMatrix yt, dy, dx;
        proteus::PositionVector positions;
        proteus::Gradients grads;
        proteus::TrainingState state;  // reused by every step, as a training loop does
        if (o.backward) {
          yt = proteus::TokenMatrix("bench::y", n, o.embed);
          dy = proteus::TokenMatrix("bench::dy", n, o.embed);
          dx = proteus::TokenMatrix("bench::dx", n, o.embed);
          Kokkos::deep_copy(dy, 1e-3f);
          positions = proteus::PositionVector("bench::positions", n);
          Kokkos::parallel_for(
              "bench::positions", Kokkos::RangePolicy<proteus::ExecSpace>(0, n),
              KOKKOS_LAMBDA(long r) { positions(r) = r % T; });
          grads = proteus::Gradients::allocate(o.embed, mha.config().num_gates);
        }
        long long allocations = 0;  // over the timed calls
        for (int i = 0; i < o.warmup + o.repeat; ++i) {
          proteus::perf::untimed_fence();
          long long const allocated = proteus::detail::allocation_count();
          auto const t0 = std::chrono::steady_clock::now();
          std::optional<proteus::ForwardStats> stats;
          if (o.backward) {
            proteus::RunOptions run;
            run.defer_statistics = o.defer_statistics;
            stats = mha.run_training(proteus::ExecSpace(), xt, o.batch, positions, yt, state, run);
            mha.backward(proteus::ExecSpace(), state, dy, dx, grads);
          } else {
            stats = mha.forward(proteus::ExecSpace(), x, {}, {}, {}, true).second;
          }
          proteus::perf::untimed_fence();
          double const s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          mha.complete_statistics(proteus::ExecSpace(), *stats);
          if (i >= o.warmup) {
            times.push_back(s);
            allocations += proteus::detail::allocation_count() - allocated;
          }
          proteus::perf::KernelTimes::get().on = o.profile && i + 1 >= o.warmup;
          st = *stats;
        }
        proteus::perf::KernelTimes::get().on = false;
        std::sort(times.begin(), times.end());
        double const median = times[times.size() / 2];
        last[alpha] = {T, median};
        double const peak = proteus::detail::peak_memory_mb() - base_mb;
        double const kept = static_cast<double>(st.tokens_kept) / (static_cast<double>(o.batch) * T);
        std::printf("%9ld %6.2f %10s %4d %8ld %12.3f %12.4g %10.1f %10.1f %6.3f\n", T, alpha, st.mode.c_str(),
                    st.heads_k, st.plan.budget, median * 1e3, o.batch * T / median, peak, st.mean_candidates, kept);
        std::fflush(stdout);
        if (o.memory) {
          std::printf("    alive at the peak (bytes per token, the timed input excluded):\n");
          double const per_token = 1.0 / (static_cast<double>(o.batch) * T);
          for (auto const& a : proteus::detail::allocations_at_peak())
            if (a.bytes * per_token >= 16 && a.label != "bench::x")
              std::printf("      %10.0f  %s\n", a.bytes * per_token, a.label.c_str());
          std::printf("    allocations per call (warm-up and timed calls, by label):\n");
          for (auto const& [label, count] : proteus::detail::allocations_made())
            std::printf("      %6.1f  %s\n", static_cast<double>(count) / (o.warmup + o.repeat), label.c_str());
        }
        if (o.profile) {
          double total = 0;
          for (auto const& [sec, name] : proteus::perf::kernel_report()) total += sec;
          double const per_call = 1e3 / o.repeat;
          std::printf("    kernels (ms per call; the rest of %.3f ms is BLAS and host work):\n", median * 1e3);
          int shown = 0;
          for (auto const& [sec, name] : proteus::perf::kernel_report())
            if (shown++ < 40) std::printf("      %10.3f  %s\n", sec * per_call, name.c_str());
          std::printf("      %10.3f  (all Kokkos kernels)\n", total * per_call);
          auto& kt = proteus::perf::KernelTimes::get();
          std::printf("    per call: %.0f kernels, %.0f fences, %.0f deep copies, %.0f device allocations\n",
                      double(kt.kernels) / o.repeat, double(kt.fences) / o.repeat, double(kt.copies) / o.repeat,
                      double(allocations) / o.repeat);
          for (auto const& [name, k] : kt.fence_names)
            std::printf("      fence %5.1f x  %s\n", double(k) / o.repeat, name.c_str());
          for (auto const& [name, k] : kt.copy_names)
            std::printf("      copy  %5.1f x  %s\n", double(k) / o.repeat, name.c_str());
          kt.seconds.clear();
          kt.fence_names.clear();
          kt.copy_names.clear();
          kt.kernels = kt.fences = kt.copies = 0;
        }
        if (csv.is_open())
          csv << proteus::ExecSpace::name() << "," << T << "," << alpha << "," << st.mode << "," << st.heads_k << ","
              << st.plan.budget << "," << median * 1e3 << "," << o.batch * T / median << "," << peak << ","
              << st.mean_candidates << "," << kept << "\n";
      }
  }
  MPI_Finalize();
  return rc;
}
