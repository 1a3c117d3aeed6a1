// The main job as a list of phases (the conductor): each phase is one function below, timed and
// wrapped in a profiling region "proteus::pipeline::<phase>", and passes the stages only the
// values they need. The deck is read here and nowhere below.
#include "proteus/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <set>

#include "proteus/buffer_exchange.hpp"
#include "proteus/checkpoint.hpp"
#include "proteus/chunk_grid.hpp"
#include "proteus/chunk_pipeline.hpp"
#include "proteus/detail/atomic_file.hpp"
#include "proteus/detail/collective.hpp"
#include "proteus/detail/directory_lock.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/stop_signal.hpp"
#include "proteus/dna_chain.hpp"
#include "proteus/error.hpp"
#include "proteus/memory_tracker.hpp"
#include "proteus/progress.hpp"
#include "proteus/second_pass.hpp"
#include "proteus/sequence_source.hpp"

namespace proteus {

namespace fs = std::filesystem;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double peak_host_mb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0.0;
}

double available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("MemAvailable:", 0) == 0) return std::stod(line.substr(13)) * 1024.0;
  return 0.0;
}

int ranks_on_node(MPI_Comm comm) {
  MPI_Comm local;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int n = 1;
  MPI_Comm_size(local, &n);
  MPI_Comm_free(&local);
  return n;
}

// What the phases of one run share.
struct Run {
  ExecSpace space;
  MPI_Comm comm;
  RunDeck const& deck;
  int rank = 0, ranks = 1;
  std::unique_ptr<CausalGeneticMultiheadAttention> model;  // weights and DNA at run start
  std::unique_ptr<SequenceSource> source;
  ChunkGrid grid;
  ChunkRange range;          // this rank's chunks
  RankState state;           // this rank's chunk stage
  DnaState final_dna;        // after the chunk stage, joined over ranks
  GlobalBuffer buffer;
  TokenMatrix buffer_tokens;  // [S x E], the same on every rank
  std::vector<Position> needles;
  fs::path checkpoint_dir, output_dir;
  std::vector<detail::DirectoryLock> locks;  // rank 0: one run per output / checkpoint directory
  RunSummary sum;

  Run(ExecSpace const& s, MPI_Comm c, RunDeck const& d) : space(s), comm(c), deck(d) {
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &ranks);
    checkpoint_dir = deck.checkpoint.directory;
    output_dir = deck.output.directory;
    sum.ranks = ranks;
  }
  std::string checkpoint_name(long chunk) const {
    char name[64];
    std::snprintf(name, sizeof name, "checkpoint_%09ld.h5", chunk);
    return (checkpoint_dir / name).string();
  }
  std::string dna_dump() const { return (output_dir / "dna_dump.h5").string(); }
};

// Runs phase(r) inside a profiling region and adds its wall time to `seconds` (when given).
template <class Phase>
void timed(char const* region, double* seconds, Phase&& phase) {
  detail::ScopedRegion guard(region);
  double const t0 = now();
  phase();
  if (seconds) *seconds += now() - t0;
}

// Every check that can fail on bad input, agreed on by all ranks, before anything large is
// allocated: the model (and its weights), the source, the deck against the sequence, memory.
void preflight(Run& r) {
  RunDeck const& deck = r.deck;
  int const node_ranks = ranks_on_node(r.comm);
  detail::run_agreed(r.comm, [&] {
    deck.validate_model();  // before the model is built: its errors name the deck's line
    r.model = std::make_unique<CausalGeneticMultiheadAttention>(r.space, deck.model);
    if (!deck.checkpoint.weights.empty()) load_model(r.space, deck.checkpoint.weights, *r.model);
    std::string const deck_dir = deck.path.empty() ? "" : fs::path(deck.path).parent_path().string();
    r.source = make_source(deck.sequence, deck.model.embed_dim, r.model->dna(), deck_dir);
    long const tokens = r.source->tokens();
    deck.validate(r.ranks, tokens);
    r.sum.estimated_mb_per_rank = estimate_rank_bytes(deck, tokens, r.ranks) / (1 << 20);
    double const limit =
        deck.pipeline.memory_limit_gb > 0 ? deck.pipeline.memory_limit_gb * (1 << 30) : available_bytes();
    double const per_rank_limit = limit / node_ranks;
    if (per_rank_limit > 0 && r.sum.estimated_mb_per_rank * (1 << 20) > per_rank_limit)
      fail(deck.path, "estimated memory " + std::to_string(long(r.sum.estimated_mb_per_rank)) +
                          " MiB per rank exceeds the " + std::to_string(long(per_rank_limit / (1 << 20))) +
                          " MiB available per rank: lower [pipeline] chunk_tokens or buffer_tokens (or raise "
                          "[pipeline] memory_limit_gb)");
  });
  r.grid = ChunkGrid{r.source->tokens(), deck.pipeline.chunk_tokens};
  r.range = r.grid.chunks_of_rank(r.rank, r.ranks);
  r.needles = r.source->needles();
  r.sum.tokens = r.grid.tokens;
  r.sum.chunks = r.grid.count();
}

// Keys a restart may change: where results go and how often checkpoints are kept, never what the
// run computes.
std::set<std::string> const& keys_a_restart_may_change() {
  static std::set<std::string> const keys = {
      "output.directory",         "output.progress_seconds",    "output.write_outputs",
      "output.warn_after_seconds", "checkpoint.directory",       "checkpoint.keep_last",
      "checkpoint.interval_chunks", "checkpoint.at_end",         "checkpoint.collective_io",
      "checkpoint.dna_dump",       "pipeline.memory_limit_gb"};
  return keys;
}

// The restart checkpoint must come from this deck: every key that changes results must match.
void check_restart_deck(Run const& r, std::string const& restart) {
  RunDeck const stored = read_deck_text(read_checkpoint_deck(restart), restart + " (its deck)");
  std::vector<std::string> const differ = deck_differences(stored, r.deck, keys_a_restart_may_change());
  if (differ.empty()) return;
  std::string list;
  for (std::string const& d : differ) list += (list.empty() ? "" : ", ") + d;
  fail(restart, "--restart: the deck differs from the checkpoint's run in " + list +
                    " (checkpoint against deck); only output and checkpoint-keeping keys may change");
}

// A fresh rank state, or this rank's state from the restart checkpoint; output directories.
void prepare_state(Run& r, std::optional<std::string> const& restart) {
  Config const& c = r.model->config();
  r.state.dna.reset(c.num_gates, c.embed_dim);
  r.state.next_chunk = r.range.first;
  if (restart) {
    detail::run_agreed(r.comm, [&] {
      check_restart_deck(r, *restart);
      r.state = read_rank_state(*restart, r.comm, c, r.grid);
    });
    r.sum.resumed_from_chunk = r.state.next_chunk;
  }
  CheckpointSpec const& ck = r.deck.checkpoint;
  detail::run_agreed(r.comm, [&] {
    if (r.rank != 0) return;
    r.locks.emplace_back(r.output_dir.string(), "[output] directory");
    bool const checkpoints = ck.interval_chunks > 0 || ck.at_end;
    std::error_code ec;
    if (checkpoints && !fs::equivalent(r.output_dir, r.checkpoint_dir, ec))
      r.locks.emplace_back(r.checkpoint_dir.string(), "[checkpoint] directory");
    if (ck.dna_dump && !restart) fs::remove(r.dna_dump());
  });
}

CheckpointContent checkpoint_content(Run const& r) {
  CheckpointContent content;
  content.deck_text = deck_to_ini(r.deck);
  content.model = r.model.get();
  content.grid = r.grid;
  content.collective_io = r.deck.checkpoint.collective_io;
  content.state = &r.state;
  return content;
}

// Writes a checkpoint (collective) and keeps the newest keep_last.
void checkpoint(Run& r, CheckpointContent const& content, long chunk) {
  r.sum.checkpoint = r.checkpoint_name(chunk);
  write_checkpoint(r.sum.checkpoint, r.comm, content);
  if (r.rank == 0) prune_checkpoints(r.checkpoint_dir.string(), "checkpoint_", r.deck.checkpoint.keep_last);
}

// After a round: the DNA as it stands (collective), appended to the dump on rank 0.
void dump_dna_so_far(Run& r) {
  DnaState const so_far = combine_dna(r.space, r.comm, r.state.dna, r.model->dna(), r.model->config().dna_decay);
  long seen = 0;
  long const mine = r.grid.tokens_in(r.range.first, r.state.next_chunk);
  MPI_Allreduce(&mine, &seen, 1, MPI_LONG, MPI_SUM, r.comm);
  if (r.rank == 0) append_dna_snapshot(r.dna_dump(), so_far, seen);
}

// A stop request (SIGTERM, SIGINT) during the chunk stage: every rank writes its state into a
// checkpoint (when the deck keeps checkpoints) and the run ends with StopRequested.
[[noreturn]] void stop_with_checkpoint(Run& r, int signum) {
  long done = r.state.next_chunk - r.range.first;
  MPI_Allreduce(MPI_IN_PLACE, &done, 1, MPI_LONG, MPI_SUM, r.comm);
  std::string const name = signum == SIGINT ? "SIGINT" : signum == SIGTERM ? "SIGTERM" : "signal " + std::to_string(signum);
  std::string message = "stopped by " + name + " after " + std::to_string(done) + " of " +
                        std::to_string(r.grid.count()) + " chunks; ";
  if (r.deck.checkpoint.interval_chunks > 0 || r.deck.checkpoint.at_end) {
    timed("proteus::pipeline::checkpoint", &r.sum.seconds_checkpoint,
          [&] { checkpoint(r, checkpoint_content(r), done); });
    message += "checkpoint written: " + r.sum.checkpoint + "; resume with --restart " + r.sum.checkpoint;
  } else {
    message += "no checkpoint: [checkpoint] interval_chunks = 0 and at_end = false in the deck";
  }
  throw StopRequested(r.rank == 0 ? message : "", signum);
}

// The chunk stage in rounds of interval_chunks per rank; the checkpoint after each round is
// collective, and every rank goes through the same number of rounds.
void chunk_rounds(Run& r) {
  RunDeck const& deck = r.deck;
  CausalGeneticMultiheadAttention const scorer =
      model_like(r.space, *r.model, chunk_scorer_config(deck.model, deck.pipeline), r.model->dna());
  NucleusSpec const nucleus{deck.pipeline.top_p, deck.pipeline.chunk_budget};
  long const mine = r.range.size();
  long const interval = deck.checkpoint.interval_chunks;
  long const step = interval > 0 ? interval : std::max(1L, r.grid.most_chunks_per_rank(r.ranks));
  detail::Progress progress("chunks (rank 0)", mine, deck.output.progress_seconds, r.rank == 0,
                            deck.output.warn_after_seconds);
  long const start_chunk = r.state.next_chunk;
  auto report = [&](RankState const& s) {
    progress.update(s.next_chunk - r.range.first, (s.next_chunk - start_chunk) * r.grid.chunk_tokens);
  };
  auto const stop = [] { return detail::stop_signal() != 0; };
  ChunkTimes times;
  for (long round = r.state.rounds_done;; ++round) {
    long const target = std::min(mine, (round + 1) * step);
    run_chunks(r.space, scorer, *r.source, r.grid, nucleus, {r.range.first, r.range.first + target}, r.state, report,
               stop, &times);
    // {a rank has chunks left, a rank was asked to stop}: agreed, so that every rank acts alike.
    int flags[2] = {r.state.next_chunk < r.range.last ? 1 : 0, detail::stop_signal()};
    MPI_Allreduce(MPI_IN_PLACE, flags, 2, MPI_INT, MPI_MAX, r.comm);
    if (flags[1] != 0 && flags[0] != 0) stop_with_checkpoint(r, flags[1]);
    if (flags[0] == 0) break;
    r.state.rounds_done = round + 1;
    if (deck.checkpoint.dna_dump) dump_dna_so_far(r);
    if (interval > 0)
      timed("proteus::pipeline::checkpoint", &r.sum.seconds_checkpoint, [&] {
        // Named by the chunks completed over every rank, as the final checkpoint is.
        long done = r.state.next_chunk - r.range.first;
        MPI_Allreduce(MPI_IN_PLACE, &done, 1, MPI_LONG, MPI_SUM, r.comm);
        checkpoint(r, checkpoint_content(r), done);
      });
  }
  progress.finish();
  r.sum.seconds_chunk_launch = times.launch;
  r.sum.seconds_chunk_wait = times.wait;
  r.sum.seconds_chunk_host = times.host;
  r.sum.seconds_chunk_first = times.first;
  long counters[2] = {r.state.tokens_kept(), r.state.tokens_caught()};
  MPI_Allreduce(MPI_IN_PLACE, counters, 2, MPI_LONG, MPI_SUM, r.comm);
  r.sum.tokens_kept = counters[0];
  r.sum.tokens_caught = counters[1];
}

void join_dna(Run& r) {
  r.final_dna = combine_dna(r.space, r.comm, r.state.dna, r.model->dna(), r.model->config().dna_decay);
  if (r.deck.checkpoint.dna_dump && r.rank == 0) append_dna_snapshot(r.dna_dump(), r.final_dna, r.grid.tokens);
}

// The global buffer (the same on every rank) and its token rows; needles found in it.
void select_buffer(Run& r) {
  r.buffer = select_global_buffer(r.space, r.comm, r.state.candidates, r.deck.pipeline.buffer_tokens);
  Position const own_begin = r.grid.begin(r.range.first);
  Position const own_end = std::min(r.grid.tokens, r.grid.begin(r.range.last));
  r.buffer_tokens = gather_buffer_embeddings(r.space, r.comm, *r.source, r.buffer, own_begin, own_end);
  RunSummary& sum = r.sum;
  std::vector<Position> const& bp = r.buffer.positions;
  sum.candidates = r.buffer.candidates;
  sum.buffer_tokens = static_cast<long>(r.buffer.size());
  for (Position p : r.needles) sum.needles_found += std::binary_search(bp.begin(), bp.end(), p) ? 1 : 0;
  sum.needles = static_cast<long>(r.needles.size());
  sum.buffer_head.assign(bp.begin(), bp.begin() + std::min<size_t>(8, bp.size()));
  sum.buffer_positions.assign(bp.begin(), bp.end());
  sum.needle_positions.assign(r.needles.begin(), r.needles.end());
}

// Attention over the buffer, query rows split over ranks; the output norm on rank 0, and the
// outputs themselves gathered to rank 0 only when they are written.
void buffer_pass(Run& r) {
  RunDeck const& deck = r.deck;
  CausalGeneticMultiheadAttention pass =
      model_like(r.space, *r.model, buffer_pass_config(deck.model, deck.pipeline), r.final_dna);
  long const s = static_cast<long>(r.buffer.size());
  PositionVector pos("proteus::buffer::positions", s);
  auto hp = Kokkos::create_mirror_view(pos);
  for (long i = 0; i < s; ++i) hp(i) = r.buffer.positions[i];
  Kokkos::deep_copy(r.space, pos, hp);
  TokenMatrix y("proteus::buffer::y", s, deck.model.embed_dim);
  auto const rows = buffer_rows_of_rank(s, r.rank, r.ranks);
  RunOptions opt;
  opt.row_begin = rows.first;
  opt.row_end = rows.second;
  r.sum.buffer_mode = pass.run(r.space, r.buffer_tokens, 1, pos, y, opt).mode;
  double const norm = buffer_output_norm(r.space, r.comm, y);
  if (r.rank == 0) r.sum.buffer_output_norm = norm;
  if (!deck.output.write_outputs) return;
  TokenMatrix const all = gather_rows_to_root(r.space, r.comm, y);
  if (r.rank != 0) return;
  auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), all);
  r.sum.buffer_outputs.assign(h.data(), h.data() + h.size());
  r.sum.outputs_file = (r.output_dir / "outputs.h5").string();
  write_outputs(r.sum.outputs_file, r.buffer.positions, r.sum.buffer_outputs, deck.model.embed_dim,
                "buffer pass output per buffer token, rows in position order");
}

// Every token: its local window plus the earlier buffer; norms reduced over ranks.
void second_pass(Run& r) {
  RunDeck const& deck = r.deck;
  CausalGeneticMultiheadAttention pass = model_like(r.space, *r.model, second_pass_config(deck.model), r.final_dna);
  std::string const path =
      deck.output.write_outputs ? (r.output_dir / ("second_pass_rank" + std::to_string(r.rank) + ".h5")).string() : "";
  SecondPassResult const out = run_second_pass(r.space, pass, *r.source, r.buffer, r.buffer_tokens, r.grid,
                                               deck.pipeline.second_pass_window, r.range, path);
  double totals[2] = {static_cast<double>(out.tokens), out.sum_of_squares};
  MPI_Allreduce(MPI_IN_PLACE, totals, 2, MPI_DOUBLE, MPI_SUM, r.comm);
  r.sum.second_pass_tokens = static_cast<long>(totals[0]);
  r.sum.second_pass_norm = std::sqrt(totals[1]);
}

void final_checkpoint(Run& r) {
  CheckpointContent content = checkpoint_content(r);
  content.final_dna = &r.final_dna;
  content.buffer = &r.buffer;
  content.needles = &r.needles;
  checkpoint(r, content, r.grid.count());
}

// Peak memory of every rank, then summary.json and the resolved deck on rank 0.
void write_summary(Run& r, double t_start) {
  RunSummary& sum = r.sum;
  sum.seconds_total = now() - t_start;
  sum.tokens_per_second = sum.seconds_total > 0 ? sum.tokens / sum.seconds_total : 0.0;
  double const host = peak_host_mb(), device = detail::peak_memory_mb();
  sum.peak_host_mb.resize(r.ranks);
  sum.peak_device_mb.resize(r.ranks);
  MPI_Gather(&host, 1, MPI_DOUBLE, sum.peak_host_mb.data(), 1, MPI_DOUBLE, 0, r.comm);
  MPI_Gather(&device, 1, MPI_DOUBLE, sum.peak_device_mb.data(), 1, MPI_DOUBLE, 0, r.comm);
  if (r.rank != 0) return;
  detail::write_text_atomically((r.output_dir / "summary.json").string(), sum.to_json());
  detail::write_text_atomically((r.output_dir / "deck.resolved.in").string(), deck_to_ini(r.deck));
}

}  // namespace

Config chunk_scorer_config(Config const& model, PipelineSpec const& pipeline) {
  Config c = model;
  c.token_sparse = true;
  c.token_keep_ratio = static_cast<float>(pipeline.chunk_keep_ratio);
  c.token_keep_min_ratio = static_cast<float>(pipeline.chunk_keep_ratio);
  c.dna_update = false;
  return c;
}

Config buffer_pass_config(Config const& model, PipelineSpec const& pipeline) {
  Config c = model;
  c.token_sparse = pipeline.buffer_keep_ratio < 1.0;
  c.token_keep_ratio = static_cast<float>(pipeline.buffer_keep_ratio);
  c.token_keep_min_ratio = static_cast<float>(pipeline.buffer_keep_ratio);
  c.dna_update = false;
  return c;
}

Config second_pass_config(Config const& model) {
  Config c = model;
  c.token_sparse = false;
  c.dna_update = false;
  return c;
}

double estimate_rank_bytes(RunDeck const& deck, long tokens, int ranks) {
  Config const c = deck.model.resolved();
  PipelineSpec const& p = deck.pipeline;
  double const e = c.embed_dim, g = c.num_gates, h = c.num_heads;
  double const chunk = std::min<double>(p.chunk_tokens, tokens);
  double const chunks = std::ceil(static_cast<double>(tokens) / p.chunk_tokens);
  double const per_chunk = std::min<double>(p.chunk_budget, chunk * p.chunk_keep_ratio + 4);
  double const candidates = chunks * per_chunk;
  double const s = std::min<double>(p.buffer_tokens, candidates);
  // Chunk stage: tokens, router/similarity/gate probabilities, per-token vectors, sort keys.
  double const chunk_bytes = chunk * (4 * e + 12 * g + 40) + 16 * g * e;
  // Candidates: this rank's, then everyone's during the exchange (position, score, key).
  double const cand_bytes = candidates / ranks * 12 + candidates * 28;
  // Buffer pass: x, q, context, output and their copies (7 E floats a token), K|V (2 E floats, or
  // 2 E BF16 values and one stage of kv_stage_rows in FP32), the BF16 copies of the GEMMs' rows and weights
  // (bf16_projections), routing, head masks.
  double const kv = c.kv_bf16 ? s * 2 * 2 * e + std::min<double>(s, c.kv_stage_rows) * 4 * 2 * e : s * 4 * 2 * e;
  double const rounded = c.bf16_projections ? s * 2 * e + 2 * 2 * e * e : 0.0;
  double const buffer_bytes = p.buffer_pass ? s * (4 * 7 * e + 16 * g + 9 * h + 40) + kv + rounded : s * 4 * e;
  double const model_bytes = 4 * (5 * e * e + 3 * g * e) * 2;
  return chunk_bytes + cand_bytes + buffer_bytes + model_bytes + 64.0 * (1 << 20);  // + runtime
}

void warm_up(ExecSpace const& space, RunDeck const& deck) {
  detail::ScopedRegion guard("proteus::pipeline::warm_up");
  deck.validate_model();
  PipelineSpec const& p = deck.pipeline;
  CausalGeneticMultiheadAttention const model(space, deck.model);
  SequenceSpec made_up;
  made_up.tokens = std::max(p.chunk_tokens, p.buffer_tokens);
  made_up.needles = 0;
  SyntheticSource const source(made_up, deck.model.embed_dim, model.dna());
  CausalGeneticMultiheadAttention const scorer =
      model_like(space, model, chunk_scorer_config(deck.model, p), model.dna());
  RankState state;
  state.dna.reset(model.config().num_gates, model.config().embed_dim);
  run_chunks(space, scorer, source, ChunkGrid{p.chunk_tokens, p.chunk_tokens}, NucleusSpec{p.top_p, p.chunk_budget},
             ChunkRange{0, 1}, state, [](RankState const&) {});
  if (p.buffer_tokens > 0) {
    std::vector<Position> rows(p.buffer_tokens);
    std::iota(rows.begin(), rows.end(), Position{0});
    TokenMatrix tokens("proteus::warm_up::buffer_tokens", p.buffer_tokens, deck.model.embed_dim);
    source.read_rows(space, rows, tokens);
    if (p.buffer_pass) {
      CausalGeneticMultiheadAttention pass = model_like(space, model, buffer_pass_config(deck.model, p), model.dna());
      PositionVector pos("proteus::warm_up::positions", p.buffer_tokens);
      Kokkos::deep_copy(space, pos, Kokkos::View<Position const*, HostSpace, Kokkos::MemoryUnmanaged>(
                                        rows.data(), rows.size()));
      TokenMatrix y("proteus::warm_up::y", p.buffer_tokens, deck.model.embed_dim);
      pass.run(space, tokens, 1, pos, y, RunOptions{});
    }
  }
  space.fence();
}

RunSummary run_pipeline(ExecSpace const& space, RunDeck const& deck, MPI_Comm comm,
                        std::optional<std::string> const& restart) {
  double const t_start = now();
  detail::track_memory();
  detail::reset_peak_memory();
  Run r(space, comm, deck);
  RunSummary& sum = r.sum;
  timed("proteus::pipeline::preflight", nullptr, [&] { preflight(r); });
  timed("proteus::pipeline::prepare", nullptr, [&] { prepare_state(r, restart); });
  double const checkpoints_before = sum.seconds_checkpoint;
  timed("proteus::pipeline::chunks", &sum.seconds_chunks, [&] { chunk_rounds(r); });
  sum.seconds_chunks -= sum.seconds_checkpoint - checkpoints_before;  // round checkpoints count apart
  // A stop requested after the last chunk: the chunk stage is kept, the later phases rerun on restart.
  int signum = detail::stop_signal();
  MPI_Allreduce(MPI_IN_PLACE, &signum, 1, MPI_INT, MPI_MAX, r.comm);
  if (signum != 0) stop_with_checkpoint(r, signum);
  timed("proteus::pipeline::dna_join", &sum.seconds_dna, [&] { join_dna(r); });
  timed("proteus::pipeline::buffer_select", &sum.seconds_exchange, [&] { select_buffer(r); });
  if (deck.pipeline.buffer_pass && r.buffer.size() > 0)
    timed("proteus::pipeline::buffer_pass", &sum.seconds_buffer_pass, [&] { buffer_pass(r); });
  if (deck.pipeline.second_pass)
    timed("proteus::pipeline::second_pass", &sum.seconds_second_pass, [&] { second_pass(r); });
  if (deck.checkpoint.at_end)
    timed("proteus::pipeline::checkpoint", &sum.seconds_checkpoint, [&] { final_checkpoint(r); });
  timed("proteus::pipeline::summary", nullptr, [&] { write_summary(r, t_start); });
  return sum;
}

}  // namespace proteus
