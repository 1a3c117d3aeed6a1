// HDF5 checkpoints: one file under a temporary name, written by every rank (collective, parallel
// HDF5) or by rank 0 from gathered rows (detail::H5RankFile decides), renamed into place at the end.
// Reading checks the format version, shapes and types.
#include "proteus/checkpoint.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "proteus/detail/atomic_file.hpp"
#include "proteus/detail/collective.hpp"
#include "proteus/detail/hdf5_io.hpp"
#include "proteus/error.hpp"
#include "proteus/version.hpp"

namespace proteus {

using detail::H5File;

namespace {

template <class View>
std::vector<typename View::non_const_value_type> host_vector(View const& v) {
  auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), v);
  return std::vector<typename View::non_const_value_type>(h.data(), h.data() + h.size());
}

template <class View, class T>
void to_view(ExecSpace const& space, std::vector<T> const& data, View const& v) {
  auto h = Kokkos::create_mirror_view(v);
  for (size_t i = 0; i < data.size(); ++i) h.data()[i] = static_cast<typename View::non_const_value_type>(data[i]);
  Kokkos::deep_copy(space, v, h);
  space.fence();  // h is freed on return
}

hsize_t dim(size_t n) { return static_cast<hsize_t>(n); }

// File: detail::H5File or detail::H5RankFile (the same writing calls).
template <class File>
void write_dna(File const& f, std::string const& group, DnaState const& dna) {
  f.create_group(group);
  hsize_t const g = dna.prototypes.extent(0), e = dna.prototypes.extent(1);
  f.write(group + "/prototypes", {g, e}, host_vector(dna.prototypes).data());
  f.write(group + "/usage", {g}, host_vector(dna.usage).data());
  f.write(group + "/confidence", {g}, host_vector(dna.confidence).data());
  f.attr(group, "description",
         std::string("DNA: one prototype per gate [gates x embed], EMA usage mass and confidence per gate"));
}

// The serialised state of one rank: [next_chunk, rounds, kept, caught, chunks, n_candidates].
std::vector<std::int64_t> header_of(RankState const& s) {
  return {s.next_chunk,      s.rounds_done, s.tokens_kept(),
          s.tokens_caught(), s.dna.chunks,  static_cast<std::int64_t>(s.candidates.size())};
}

}  // namespace

namespace {

// What every rank contributes to a checkpoint beyond the model: its rows of the per-rank
// datasets, and totals over ranks (identical on every rank, so they can be attributes).
struct RankRows {
  std::vector<std::int64_t> header, hits;
  std::vector<double> chain;  // prototypes [G*E], usage [G], confidence [G]
  long long totals[3] = {0, 0, 0};  // tokens kept, tokens caught, tokens processed
  std::vector<std::int64_t> gate_hits;
};

RankRows rank_rows(MPI_Comm comm, CheckpointContent const& c) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  RankState const& s = *c.state;
  RankRows r;
  r.header = header_of(s);
  r.chain = s.dna.prototypes;
  r.chain.insert(r.chain.end(), s.dna.usage.begin(), s.dna.usage.end());
  r.chain.insert(r.chain.end(), s.dna.confidence.begin(), s.dna.confidence.end());
  r.hits.assign(s.dna.hits.begin(), s.dna.hits.end());
  r.totals[0] = r.header[2];
  r.totals[1] = r.header[3];
  r.totals[2] = c.grid.tokens_in(c.grid.chunks_of_rank(rank, ranks).first, s.next_chunk);
  MPI_Allreduce(MPI_IN_PLACE, r.totals, 3, MPI_LONG_LONG, MPI_SUM, comm);
  r.gate_hits = r.hits;
  MPI_Allreduce(MPI_IN_PLACE, r.gate_hits.data(), s.dna.gates, MPI_INT64_T, MPI_SUM, comm);
  return r;
}

// The format version and the writer's version and commit (every file with the model in it).
template <class File>
void write_writer(File const& f) {
  f.attr("/", "format_version", static_cast<long long>(checkpoint_format_version));
  f.attr("/", "proteus_version", std::string(PROTEUS_VERSION_STRING));
  f.attr("/", "commit", std::string(PROTEUS_GIT_COMMIT));
}

void write_identity(detail::H5RankFile const& f, CheckpointContent const& c, int ranks) {
  write_writer(f);
  f.attr("/", "deck", c.deck_text);
  f.attr("/", "tokens", static_cast<long long>(c.grid.tokens));
  f.attr("/", "chunks_total", static_cast<long long>(c.grid.count()));
  f.attr("/", "chunk_tokens", static_cast<long long>(c.grid.chunk_tokens));
  f.attr("/", "ranks", static_cast<long long>(ranks));
  f.attr("/", "complete", static_cast<long long>(c.buffer != nullptr ? 1 : 0));
  f.attr("/", "written_by", std::string(f.collective() ? "every rank (parallel HDF5, collective)" : "rank 0"));
}

template <class File>
void write_config(File const& f, Config const& cfg) {
  f.create_group("/config");
  f.attr("/config", "embed_dim", static_cast<long long>(cfg.embed_dim));
  f.attr("/config", "num_heads", static_cast<long long>(cfg.num_heads));
  f.attr("/config", "num_gates", static_cast<long long>(cfg.num_gates));
  f.attr("/config", "head_dim", static_cast<long long>(cfg.head_dim()));
  f.attr("/config", "seed", static_cast<long long>(cfg.seed));
  f.attr("/config", "dna_decay", static_cast<double>(cfg.dna_decay));
  f.attr("/config", "dna_threshold", static_cast<double>(cfg.dna_threshold));
  f.attr("/config", "dna_blend", static_cast<double>(cfg.dna_blend));
  f.attr("/config", "dna_temperature", static_cast<double>(cfg.dna_temperature));
  f.attr("/config", "rope_base", cfg.rope_base);
  f.attr("/config", "tf32_projections", static_cast<long long>(cfg.tf32_projections ? 1 : 0));
  f.attr("/config", "bf16_projections", static_cast<long long>(cfg.bf16_projections ? 1 : 0));
  f.attr("/config", "kv_bf16", static_cast<long long>(cfg.kv_bf16 ? 1 : 0));
  f.attr("/config", "mode", to_string(cfg.mode));
  f.attr("/config", "alpha", static_cast<double>(cfg.alpha));
}

// Weights, the run-start DNA and the gate map.
template <class File>
void write_model(File const& f, CausalGeneticMultiheadAttention const& m) {
  Config const& cfg = m.config();
  Weights const& w = m.weights();
  f.create_group("/weights");
  f.attr("/weights", "layout", std::string("torch.nn.Linear: weight [out x in], y = x W^T + b"));
  hsize_t const E = cfg.embed_dim, G = cfg.num_gates;
  f.write("/weights/qkv_weight", {3 * E, E}, host_vector(w.qkv_weight).data());
  f.write("/weights/qkv_bias", {3 * E}, host_vector(w.qkv_bias).data());
  f.write("/weights/out_weight", {E, E}, host_vector(w.out_weight).data());
  f.write("/weights/out_bias", {E}, host_vector(w.out_bias).data());
  f.write("/weights/router_weight", {G, E}, host_vector(w.router_weight).data());
  write_dna(f, "/dna", m.dna());
  std::vector<std::int32_t> map(cfg.gate_to_head.begin(), cfg.gate_to_head.end());
  f.write("/gate_to_head", {G}, map.data());
  f.attr("/gate_to_head", "description", std::string("head of each gate (many gates per head)"));
}

// Every rank's state (collective rows), so that a run resumes at its next chunk.
void write_run_state(detail::H5RankFile const& f, RankState const& s, RankRows const& r) {
  hsize_t const G = static_cast<hsize_t>(s.dna.gates);
  f.create_group("/run");
  f.attr("/run", "tokens_processed", r.totals[2]);
  f.attr("/run", "rng", std::string("none needed: synthetic tokens are a pure function of (sequence seed, position)"));
  f.write_rows("/run/rank_header", {6}, 1, r.header.data());
  f.attr("/run/rank_header", "columns",
         std::string("next_chunk, rounds_done, tokens_kept, tokens_caught, dna_chunks, candidates"));
  f.write_rows("/run/candidate_positions", {}, static_cast<long>(s.candidates.size()), s.candidates.positions.data());
  f.write_rows("/run/candidate_scores", {}, static_cast<long>(s.candidates.size()), s.candidates.scores.data());
  f.attr("/run/candidate_positions", "units", std::string("token positions in the original sequence"));
  f.write_rows("/run/dna_chain", {dim(r.chain.size())}, 1, r.chain.data());
  f.attr("/run/dna_chain", "layout", std::string("per rank: prototypes [G*E], usage [G], confidence [G] (float64)"));
  f.write_rows("/run/dna_hits", {G}, 1, r.hits.data());
}

void write_statistics(detail::H5RankFile const& f, RankState const& s, RankRows const& r) {
  static_assert(sizeof(ChunkRecord) == 4 * sizeof(std::int64_t), "ChunkRecord is written as 4 int64 columns");
  f.create_group("/statistics");
  f.attr("/statistics", "tokens_kept", r.totals[0]);
  f.attr("/statistics", "tokens_caught", r.totals[1]);
  f.write_rows("/statistics/chunks", {4}, static_cast<long>(s.chunk_log.size()),
               reinterpret_cast<std::int64_t const*>(s.chunk_log.data()));
  f.attr("/statistics/chunks", "columns", std::string("chunk, candidates, tokens_kept, tokens_caught"));
  f.attr("/statistics/chunks", "units", std::string("tokens per processed chunk, rows in chunk order"));
  f.write("/statistics/gate_hits", {r.gate_hits.size()}, r.gate_hits.data());
  f.attr("/statistics/gate_hits", "units", std::string("chunks whose EMA step updated each gate"));
}

// End of run: the joined DNA, the global buffer and the needles.
void write_results(detail::H5RankFile const& f, CheckpointContent const& c) {
  if (c.final_dna) write_dna(f, "/dna_final", *c.final_dna);
  if (c.buffer) {
    f.create_group("/buffer");
    std::vector<std::int64_t> bp(c.buffer->positions.begin(), c.buffer->positions.end());
    f.write("/buffer/positions", {dim(bp.size())}, bp.data());
    f.write("/buffer/scores", {dim(bp.size())}, c.buffer->scores.data());
    f.attr("/buffer/positions", "units", std::string("token positions in the original sequence, ascending"));
    f.attr("/buffer", "candidates", static_cast<long long>(c.buffer->candidates));
  }
  if (c.needles) {
    f.create_group("/sequence");
    std::vector<std::int64_t> np(c.needles->begin(), c.needles->end());
    f.write("/sequence/needles", {dim(np.size())}, np.data());
    f.attr("/sequence/needles", "units",
           std::string("positions of the needles: planted (synthetic source) or named in the deck (hdf5 source)"));
  }
}

}  // namespace

void write_checkpoint(std::string const& path, MPI_Comm comm, CheckpointContent const& c) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  RankRows const rows = rank_rows(comm, c);
  std::string const tmp = detail::temporary_name(path);
  auto const write_all = [&](detail::H5RankFile const& f) {
    write_identity(f, c, ranks);
    write_config(f, c.model->config());
    write_model(f, *c.model);
    write_run_state(f, *c.state, rows);
    write_statistics(f, *c.state, rows);
    write_results(f, c);
  };
  try {
    detail::H5RankFile sizing(comm);  // a full disk is refused before any rank writes
    write_all(sizing);
    detail::run_agreed(comm, [&] {
      if (rank == 0 && !std::getenv("PROTEUS_TEST_SKIP_SPACE_CHECK"))
        detail::require_free_space(tmp, sizing.estimated_bytes(), "the checkpoint");
    });
    detail::run_agreed(comm, [&] {
      detail::H5RankFile f(tmp, comm, c.collective_io);
      write_all(f);
      f.close();
      if (rank == 0) detail::commit_file(tmp, path);
    });
  } catch (CollectiveError const& ex) {
    std::error_code ec;
    if (rank == 0) std::filesystem::remove(tmp, ec);
    throw CollectiveError(rank == 0 ? path + ": checkpoint not written: " + ex.what() : "");
  }
}

void write_model_file(std::string const& path, CausalGeneticMultiheadAttention const& model) {
  detail::write_atomically(path, [&](std::string const& tmp) {
    H5File f(tmp, "w");
    write_writer(f);
    f.attr("/", "content", std::string("model only: configuration, weights, DNA and gate map"));
    write_config(f, model.config());
    write_model(f, model);
    f.close();
  });
}

RankState read_rank_state(std::string const& path, MPI_Comm comm, Config const& model, ChunkGrid const& grid) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  H5File f(path, "r");
  long long const version = f.attr_int("/", "format_version");
  require(version == checkpoint_format_version, f.where("/"),
          "format_version " + std::to_string(version) + " is not the supported " +
              std::to_string(checkpoint_format_version));
  Config const& cfg = model;
  auto same = [&](char const* object, char const* name, long long expect, std::string const& key) {
    long long const got = f.attr_int(object, name);
    require(got == expect, f.where(object) + " @" + name,
            "checkpoint has " + std::to_string(got) + " but the deck has " + std::to_string(expect) + " (" + key + ")");
  };
  same("/", "ranks", ranks, "restart needs the same number of ranks");
  same("/", "chunk_tokens", grid.chunk_tokens, "[pipeline] chunk_tokens");
  same("/config", "embed_dim", cfg.embed_dim, "[model] embed_dim");
  same("/config", "num_gates", cfg.num_gates, "[model] num_gates");
  same("/config", "num_heads", cfg.num_heads, "[model] num_heads");
  same("/config", "seed", static_cast<long long>(cfg.seed), "[model] seed");
  std::vector<std::int64_t> headers, positions, hits;
  std::vector<float> scores;
  std::vector<double> chains;
  hsize_t const G = cfg.num_gates, E = cfg.embed_dim;
  f.read("/run/rank_header", {dim(ranks), 6}, headers);
  f.read("/run/candidate_positions", {0}, positions);
  f.read("/run/candidate_scores", {dim(positions.size())}, scores);
  f.read("/run/dna_chain", {dim(ranks), G * E + 2 * G}, chains);
  f.read("/run/dna_hits", {dim(ranks), G}, hits);
  // The run state is trusted only when its numbers make sense (a damaged or edited file otherwise
  // resumes into a wrong answer).
  long long const file_tokens = f.attr_int("/", "tokens");
  for (double v : chains)
    require(std::isfinite(v), f.where("/run/dna_chain"), "holds a value that is not finite");
  for (float v : scores)
    require(std::isfinite(v), f.where("/run/candidate_scores"), "holds a value that is not finite");
  for (std::int64_t p : positions)
    require(p >= 0 && p < file_tokens, f.where("/run/candidate_positions"),
            "position " + std::to_string(p) + " is outside the sequence of " + std::to_string(file_tokens) + " tokens");
  RankState s;
  std::int64_t const* h = &headers[6 * rank];
  ChunkRange const mine = ChunkGrid{file_tokens, grid.chunk_tokens}.chunks_of_rank(rank, ranks);
  require(h[0] >= mine.first && h[0] <= mine.last && h[1] >= 0 && h[4] >= 0 && h[5] >= 0, f.where("/run/rank_header"),
          "row of rank " + std::to_string(rank) + " is out of range");
  s.next_chunk = h[0];
  s.rounds_done = h[1];
  long offset = 0;
  for (int r = 0; r < rank; ++r) offset += headers[6 * r + 5];
  require(offset + h[5] <= static_cast<long>(positions.size()), f.where("/run/candidate_positions"),
          "too short for the rank headers");
  s.candidates.positions.assign(positions.begin() + offset, positions.begin() + offset + h[5]);
  s.candidates.scores.assign(scores.begin() + offset, scores.begin() + offset + h[5]);
  s.dna.reset(cfg.num_gates, cfg.embed_dim);
  s.dna.chunks = h[4];
  double const* chain = &chains[rank * (G * E + 2 * G)];
  std::copy(chain, chain + G * E, s.dna.prototypes.begin());
  std::copy(chain + G * E, chain + G * E + G, s.dna.usage.begin());
  std::copy(chain + G * E + G, chain + G * E + 2 * G, s.dna.confidence.begin());
  std::copy(hits.begin() + rank * G, hits.begin() + (rank + 1) * G, s.dna.hits.begin());
  // This rank's per-chunk records: the rows whose chunk lies in its range.
  std::vector<std::int64_t> log;
  f.read("/statistics/chunks", {0, 4}, log);
  ChunkRange const& range = mine;
  for (size_t i = 0; i + 3 < log.size(); i += 4)
    if (log[i] >= range.first && log[i] < s.next_chunk)
      s.chunk_log.push_back({log[i], log[i + 1], log[i + 2], log[i + 3]});
  require(static_cast<long>(s.chunk_log.size()) == s.next_chunk - range.first, f.where("/statistics/chunks"),
          "does not hold one row per processed chunk of rank " + std::to_string(rank));
  require(s.tokens_kept() == h[2] && s.tokens_caught() == h[3], f.where("/statistics/chunks"),
          "disagrees with the token counts in /run/rank_header for rank " + std::to_string(rank));
  return s;
}

std::string read_checkpoint_deck(std::string const& path) { return H5File(path, "r").attr_string("/", "deck"); }

namespace {
// A weight or DNA value a model can run with: finite and at most 1e6 in magnitude (trained
// weights are O(1); larger values overflow FP32 attention scores, and NaN poisons every output).
constexpr double largest_weight = 1e6;

// Reads dataset `name` of the expected dims into v, checking every value.
template <class View>
void read_checked(ExecSpace const& space, H5File const& f, std::string const& name, std::vector<hsize_t> const& dims,
                  View const& v) {
  std::vector<float> buf;
  f.read(name, dims, buf);
  for (size_t i = 0; i < buf.size(); ++i)
    require(std::isfinite(buf[i]) && std::fabs(buf[i]) <= largest_weight, f.where(name),
            "value " + std::to_string(buf[i]) + " at flat index " + std::to_string(i) +
                " is not finite or outside [-1e6, 1e6] (a damaged or wrong file?)");
  to_view(space, buf, v);
}
}  // namespace

void load_model(ExecSpace const& space, std::string const& path, CausalGeneticMultiheadAttention& model,
                std::string const& dna_group) {
  H5File f(path, "r");
  long long const version = f.attr_int("/", "format_version");
  require(version == checkpoint_format_version, f.where("/"), "unsupported format_version " + std::to_string(version));
  Config const& cfg = model.config();
  hsize_t const E = cfg.embed_dim, G = cfg.num_gates;
  Weights w = Weights::allocate(cfg.embed_dim, cfg.num_gates);
  read_checked(space, f, "/weights/qkv_weight", {3 * E, E}, w.qkv_weight);
  read_checked(space, f, "/weights/qkv_bias", {3 * E}, w.qkv_bias);
  read_checked(space, f, "/weights/out_weight", {E, E}, w.out_weight);
  read_checked(space, f, "/weights/out_bias", {E}, w.out_bias);
  read_checked(space, f, "/weights/router_weight", {G, E}, w.router_weight);
  model.set_weights(space, w);
  DnaState dna = DnaState::allocate(cfg.num_gates, cfg.embed_dim);
  read_checked(space, f, dna_group + "/prototypes", {G, E}, dna.prototypes);
  read_checked(space, f, dna_group + "/usage", {G}, dna.usage);
  read_checked(space, f, dna_group + "/confidence", {G}, dna.confidence);
  model.set_dna(space, dna);
  std::vector<std::int32_t> map;
  f.read("/gate_to_head", {G}, map);
  for (int gth = 0; gth < static_cast<int>(G); ++gth)
    require(map[gth] == cfg.gate_to_head[gth], f.where("/gate_to_head"),
            "differs from the model's gate_to_head at gate " + std::to_string(gth));
}

void append_dna_snapshot(std::string const& path, DnaState const& dna, long tokens_seen) {
  hsize_t const g = dna.prototypes.extent(0), e = dna.prototypes.extent(1);
  bool const fresh = !std::filesystem::exists(path);
  // The dump is rewritten whole under a temporary name: a failed append leaves the old dump.
  detail::write_atomically(path, [&](std::string const& tmp) {
    H5File f = H5File::edit(path, tmp);
    if (fresh) {
      f.attr("/", "format_version", static_cast<long long>(checkpoint_format_version));
      f.attr("/", "description", std::string("DNA snapshots along the sequence: one row per snapshot"));
    }
    std::int64_t const seen = tokens_seen;
    f.append_row("/tokens_seen", {}, &seen);
    f.append_row("/prototypes", {g, e}, host_vector(dna.prototypes).data());
    f.append_row("/usage", {g}, host_vector(dna.usage).data());
    f.append_row("/confidence", {g}, host_vector(dna.confidence).data());
    f.close();
  });
}

void write_outputs(std::string const& path, std::vector<Position> const& positions, std::vector<float> const& outputs,
                   int embed_dim, std::string const& description) {
  detail::write_atomically(path, [&](std::string const& tmp) {
    H5File f(tmp, "w");
    f.attr("/", "format_version", static_cast<long long>(checkpoint_format_version));
    std::vector<std::int64_t> const pos(positions.begin(), positions.end());
    f.write("/positions", {dim(pos.size())}, pos.data());
    f.write("/outputs", {dim(pos.size()), static_cast<hsize_t>(embed_dim)}, outputs.data());
    f.attr("/outputs", "description", description);
    f.close();
  });
}

void prune_checkpoints(std::string const& dir, std::string const& prefix, int keep) {
  std::vector<std::filesystem::path> files;
  for (auto const& entry : std::filesystem::directory_iterator(dir)) {
    std::string const name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && entry.path().extension() == ".h5") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (size_t i = 0; i + keep < files.size(); ++i) std::filesystem::remove(files[i]);
}

}  // namespace proteus
