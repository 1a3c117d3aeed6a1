// The main job, stage by stage, with timing, progress, checkpoints and the summary.
#include "proteus/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "proteus/buffer_exchange.hpp"
#include "proteus/checkpoint.hpp"
#include "proteus/detail/collective.hpp"
#include "proteus/chunk_pipeline.hpp"
#include "proteus/error.hpp"
#include "proteus/memory_tracker.hpp"
#include "proteus/progress.hpp"
#include "proteus/second_pass.hpp"
#include "proteus/sequence_source.hpp"

namespace proteus {

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

// Writes text to path through a temporary file and a rename.
void write_atomically(std::string const& path, std::string const& text) {
  std::string const tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << text;
    require(out.good(), tmp, "cannot write");
  }
  std::filesystem::rename(tmp, path);
}

Config buffer_pass_config(RunDeck const& deck) {
  Config c = deck.model;
  c.token_sparse = deck.pipeline.buffer_keep_ratio < 1.0;
  c.token_keep_ratio = static_cast<float>(deck.pipeline.buffer_keep_ratio);
  c.token_keep_min_ratio = static_cast<float>(deck.pipeline.buffer_keep_ratio);
  c.dna_update = false;
  return c;
}

}  // namespace

double estimate_rank_bytes(RunDeck const& deck, long tokens, int ranks) {
  Config const c = deck.model.resolved();
  double const e = c.embed_dim, g = c.num_gates, h = c.num_heads;
  double const chunk = std::min<double>(deck.pipeline.chunk_tokens, tokens);
  double const chunks = std::ceil(static_cast<double>(tokens) / deck.pipeline.chunk_tokens);
  double const per_chunk = std::min<double>(deck.pipeline.chunk_budget, chunk * deck.pipeline.chunk_keep_ratio + 4);
  double const candidates = chunks * per_chunk;
  double const s = std::min<double>(deck.pipeline.buffer_tokens, candidates);
  // Chunk stage: tokens, router/similarity/gate probabilities, per-token vectors, sort keys.
  double const chunk_bytes = chunk * (4 * e + 12 * g + 40) + 16 * g * e;
  // Candidates: this rank's, then everyone's during the exchange (position, score, key).
  double const cand_bytes = candidates / ranks * 12 + candidates * 28;
  // Buffer pass: x, qkv, q/k/v, context, output, routing, head masks.
  double const buffer_bytes = deck.pipeline.buffer_pass ? s * (4 * 9 * e + 16 * g + 9 * h + 40) : s * 4 * e;
  double const model_bytes = 4 * (5 * e * e + 3 * g * e) * 2;
  return chunk_bytes + cand_bytes + buffer_bytes + model_bytes + 64.0 * (1 << 20);  // + runtime
}

RunSummary run_pipeline(RunDeck const& deck, MPI_Comm comm, std::optional<std::string> const& restart) {
  double const t_start = now();
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  ExecSpace space;
  track_memory();
  reset_peak_memory();
  RunSummary sum;
  sum.ranks = ranks;

  // Pre-flight: every check that can fail on bad input, agreed on by all ranks.
  std::unique_ptr<CausalGeneticMultiheadAttention> model_ptr;
  std::unique_ptr<SequenceSource> source;
  long tokens = 0;
  int const node_ranks = ranks_on_node(comm);
  detail::run_agreed(comm, [&] {
    model_ptr = std::make_unique<CausalGeneticMultiheadAttention>(deck.model);
    if (!deck.checkpoint.weights.empty()) load_model(deck.checkpoint.weights, *model_ptr);
    source = make_source(deck, model_ptr->dna());
    tokens = source->tokens();
    deck.validate(ranks, tokens);
    // Refuse before allocating what the machine cannot hold.
    sum.estimated_mb_per_rank = estimate_rank_bytes(deck, tokens, ranks) / (1 << 20);
    double const limit =
        deck.pipeline.memory_limit_gb > 0 ? deck.pipeline.memory_limit_gb * (1 << 30) : available_bytes();
    double const per_rank_limit = limit / node_ranks;
    if (per_rank_limit > 0 && sum.estimated_mb_per_rank * (1 << 20) > per_rank_limit)
      fail(deck.path, "estimated memory " + std::to_string(long(sum.estimated_mb_per_rank)) + " MiB per rank exceeds the " +
                          std::to_string(long(per_rank_limit / (1 << 20))) +
                          " MiB available per rank: lower [pipeline] chunk_tokens or buffer_tokens (or raise "
                          "[pipeline] memory_limit_gb)");
  });
  CausalGeneticMultiheadAttention& model = *model_ptr;
  sum.tokens = tokens;

  CausalGeneticMultiheadAttention scorer(chunk_scorer_config(deck));
  scorer.set_weights(space, model.weights());
  scorer.set_dna(space, model.dna());

  long const chunks = chunk_count(tokens, deck.pipeline.chunk_tokens);
  sum.chunks = chunks;
  ChunkRange const range = rank_chunks(chunks, rank, ranks);
  RankState state;
  state.dna.reset(model.config().num_gates, model.config().embed_dim);
  state.next_chunk = range.first;
  if (restart) {
    detail::run_agreed(comm, [&] { state = read_rank_state(*restart, comm, deck); });
    sum.resumed_from_chunk = state.next_chunk;
  }
  std::filesystem::path const ckdir = deck.checkpoint.directory;
  std::filesystem::path const outdir = deck.output.directory;
  if (rank == 0) {
    std::filesystem::create_directories(outdir);
    if (deck.checkpoint.dna_dump && !restart) std::filesystem::remove(outdir / "dna_dump.h5");
    if (deck.checkpoint.interval_chunks > 0 || deck.checkpoint.at_end) std::filesystem::create_directories(ckdir);
  }
  MPI_Barrier(comm);
  auto checkpoint_name = [&](long chunk) {
    char name[64];
    std::snprintf(name, sizeof name, "checkpoint_%09ld.h5", chunk);
    return (ckdir / name).string();
  };

  // ---- chunk stage -------------------------------------------------------------------------
  // Chunks run in rounds of interval_chunks per rank; a checkpoint after each round is
  // collective, and every rank goes through the same number of rounds.
  double t0 = now();
  long const my_chunks = range.last - range.first;
  long const max_chunks = (chunks + ranks - 1) / ranks;
  long const step = deck.checkpoint.interval_chunks > 0 ? deck.checkpoint.interval_chunks : std::max(1L, max_chunks);
  Progress progress("chunks (rank 0)", my_chunks, deck.output.progress_seconds, rank == 0);
  long const start_chunk = state.next_chunk;
  auto report = [&](RankState const& s) {
    progress.update(s.next_chunk - range.first, (s.next_chunk - start_chunk) * deck.pipeline.chunk_tokens);
  };
  double t_checkpoint = 0.0;
  for (long round = state.rounds_done;; ++round) {
    long const target = std::min(my_chunks, (round + 1) * step);
    run_chunks(space, scorer, *source, deck.pipeline, {range.first, range.first + target}, state, report);
    int finished = state.next_chunk >= range.last ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &finished, 1, MPI_INT, MPI_MIN, comm);
    if (finished) break;
    state.rounds_done = round + 1;
    if (deck.checkpoint.dna_dump) {
      // The DNA as it stands after this round (collective), appended to the dump on rank 0.
      DnaState const so_far = combine_dna(space, comm, state.dna, model.dna(), model.config().dna_decay);
      long seen = 0;
      long mine_done = tokens_in_chunks(range.first, state.next_chunk, tokens, deck.pipeline.chunk_tokens);
      MPI_Allreduce(&mine_done, &seen, 1, MPI_LONG, MPI_SUM, comm);
      if (rank == 0) append_dna_snapshot((outdir / "dna_dump.h5").string(), so_far, seen);
    }
    if (deck.checkpoint.interval_chunks > 0) {
      double const tc = now();
      CheckpointContent content;
      content.deck = &deck;
      content.model = &model;
      content.state = &state;
      content.tokens = tokens;
      content.chunks_total = chunks;
      sum.checkpoint = checkpoint_name((round + 1) * step);
      write_checkpoint(sum.checkpoint, comm, content);
      if (rank == 0) prune_checkpoints(ckdir.string(), "checkpoint_", deck.checkpoint.keep_last);
      t_checkpoint += now() - tc;
    }
  }
  progress.finish();
  sum.seconds_chunks = now() - t0 - t_checkpoint;
  sum.seconds_checkpoint += t_checkpoint;

  long counters[2] = {state.tokens_kept(), state.tokens_caught()};
  MPI_Allreduce(MPI_IN_PLACE, counters, 2, MPI_LONG, MPI_SUM, comm);
  sum.tokens_kept = counters[0];
  sum.tokens_caught = counters[1];

  // ---- DNA: join the ranks' chains ---------------------------------------------------------
  t0 = now();
  DnaState const final_dna = combine_dna(space, comm, state.dna, model.dna(), model.config().dna_decay);
  if (deck.checkpoint.dna_dump && rank == 0) append_dna_snapshot((outdir / "dna_dump.h5").string(), final_dna, tokens);
  sum.seconds_dna = now() - t0;

  // ---- global buffer -------------------------------------------------------------------------
  t0 = now();
  GlobalBuffer const buffer = select_global_buffer(comm, state.candidates, deck.pipeline.buffer_tokens);
  sum.candidates = buffer.candidates;
  sum.buffer_tokens = static_cast<long>(buffer.size());
  Position const own_begin = range.first * deck.pipeline.chunk_tokens;
  Position const own_end = std::min(tokens, range.last * deck.pipeline.chunk_tokens);
  TokenMatrix const xbuf = gather_buffer_embeddings(space, comm, *source, buffer, own_begin, own_end);
  sum.seconds_exchange = now() - t0;
  std::vector<Position> const needles = source->needles();
  for (Position p : needles)
    sum.needles_found += std::binary_search(buffer.positions.begin(), buffer.positions.end(), p) ? 1 : 0;
  sum.needles = static_cast<long>(needles.size());
  sum.buffer_head.assign(buffer.positions.begin(), buffer.positions.begin() + std::min<size_t>(8, buffer.size()));
  sum.buffer_positions.assign(buffer.positions.begin(), buffer.positions.end());
  sum.needle_positions.assign(needles.begin(), needles.end());

  // ---- buffer pass: attention over the buffer, query rows split over ranks ----------------------
  t0 = now();
  if (deck.pipeline.buffer_pass && buffer.size() > 0) {
    CausalGeneticMultiheadAttention pass(buffer_pass_config(deck));
    pass.set_weights(space, model.weights());
    pass.set_dna(space, final_dna);
    long const s = static_cast<long>(buffer.size());
    PositionVector pos("proteus::buffer::positions", s);
    auto hp = Kokkos::create_mirror_view(pos);
    for (long i = 0; i < s; ++i) hp(i) = buffer.positions[i];
    Kokkos::deep_copy(space, pos, hp);
    TokenMatrix y("proteus::buffer::y", s, deck.model.embed_dim);
    auto [lo, hi] = buffer_rows_of_rank(s, rank, ranks);
    RunOptions opt;
    opt.row_begin = lo;
    opt.row_end = hi;
    ForwardStats const st = pass.run(space, xbuf, 1, pos, y, opt);
    sum.buffer_mode = st.mode;
    double const norm = buffer_output_norm(space, comm, y);
    if (rank == 0) sum.buffer_output_norm = norm;
    // The outputs themselves travel to rank 0 only when they are written.
    if (deck.output.write_outputs) {
      TokenMatrix const all = gather_rows_to_root(space, comm, y);
      if (rank == 0) {
        auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), all);
        sum.buffer_outputs.assign(h.data(), h.data() + h.size());
        sum.outputs_file = (outdir / "outputs.h5").string();
        write_buffer_outputs(sum.outputs_file, buffer, sum.buffer_outputs, deck.model.embed_dim);
      }
    }
  }
  sum.seconds_buffer_pass = now() - t0;

  // ---- second pass: every token, its window plus the earlier buffer --------------------------
  t0 = now();
  if (deck.pipeline.second_pass) {
    Config c = deck.model;
    c.token_sparse = false;
    c.dna_update = false;
    CausalGeneticMultiheadAttention pass(c);
    pass.set_weights(space, model.weights());
    pass.set_dna(space, final_dna);
    std::string const path =
        deck.output.write_outputs ? (outdir / ("second_pass_rank" + std::to_string(rank) + ".h5")).string() : "";
    SecondPassResult const r = run_second_pass(space, pass, *source, buffer, xbuf, deck.pipeline, range, path);
    double totals[2] = {static_cast<double>(r.tokens), r.sum_of_squares};
    MPI_Allreduce(MPI_IN_PLACE, totals, 2, MPI_DOUBLE, MPI_SUM, comm);
    sum.second_pass_tokens = static_cast<long>(totals[0]);
    sum.second_pass_norm = std::sqrt(totals[1]);
  }
  sum.seconds_second_pass = now() - t0;

  // ---- end-of-run checkpoint ----------------------------------------------------------------
  t0 = now();
  if (deck.checkpoint.at_end) {
    CheckpointContent content;
    content.deck = &deck;
    content.model = &model;
    content.final_dna = &final_dna;
    content.state = &state;
    content.buffer = &buffer;
    content.needles = &needles;
    content.tokens = tokens;
    content.chunks_total = chunks;
    sum.checkpoint = checkpoint_name(chunks);
    write_checkpoint(sum.checkpoint, comm, content);
    if (rank == 0) prune_checkpoints(ckdir.string(), "checkpoint_", deck.checkpoint.keep_last);
  }
  sum.seconds_checkpoint += now() - t0;

  sum.seconds_total = now() - t_start;
  sum.tokens_per_second = sum.seconds_total > 0 ? tokens / sum.seconds_total : 0.0;
  double const mine = peak_host_mb();
  sum.peak_host_mb.resize(ranks);
  MPI_Gather(&mine, 1, MPI_DOUBLE, sum.peak_host_mb.data(), 1, MPI_DOUBLE, 0, comm);
  double const device = peak_memory_mb();
  sum.peak_device_mb.resize(ranks);
  MPI_Gather(&device, 1, MPI_DOUBLE, sum.peak_device_mb.data(), 1, MPI_DOUBLE, 0, comm);
  if (rank == 0) {
    write_atomically((outdir / "summary.json").string(), sum.to_json());
    write_atomically((outdir / "deck.resolved.in").string(), deck_to_ini(deck));
  }
  return sum;
}

}  // namespace proteus
