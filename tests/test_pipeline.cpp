// The long-context pipeline under MPI (ctest runs it with 1, 2 and 4 ranks): results do not
// depend on the rank count, planted needles reach the buffer and are retrieved by a probe, and a
// restart from a checkpoint ends exactly where an uninterrupted run ends.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <vector>

#include "proteus/checkpoint.hpp"
#include "proteus/chunk_pipeline.hpp"
#include "proteus/detail/directory_lock.hpp"
#include "proteus/detail/hdf5_io.hpp"
#include "proteus/detail/sort_keys.hpp"
#include "proteus/detail/stop_signal.hpp"
#include "proteus/error.hpp"
#include "proteus/pipeline.hpp"
#include "proteus/random.hpp"
#include "proteus/sequence_source.hpp"
#include "pipeline_deck.hpp"
#include "test_space.hpp"
#include "reference.hpp"
#include "scratch.hpp"

using namespace proteus;

namespace {

using test::scratch;
using test::world_rank;
using test::world_size;
using test::small_deck;


std::vector<float> final_dna(std::string const& checkpoint) {
  detail::H5File f(checkpoint, "r");
  std::vector<float> p;
  f.read("/dna_final/prototypes", {0, 0}, p);
  return p;
}

std::vector<std::int64_t> chunk_rows(std::string const& checkpoint) {
  detail::H5File f(checkpoint, "r");
  std::vector<std::int64_t> rows;
  f.read("/statistics/chunks", {0, 4}, rows);
  return rows;
}

// Every dataset and attribute of an HDF5 file as raw bytes, by name ("/a/b" or "/a/b @attr").
using FileContents = std::map<std::string, std::vector<char>>;
herr_t collect_attribute(hid_t object, char const* name, H5A_info_t const*, void* out) {
  hid_t const a = H5Aopen(object, name, H5P_DEFAULT);
  hid_t const type = H5Aget_type(a), space = H5Aget_space(a);
  std::vector<char> bytes(H5Tget_size(type) * H5Sget_simple_extent_npoints(space));
  H5Aread(a, type, bytes.data());
  auto* c = static_cast<std::pair<std::string, FileContents*>*>(out);
  (*c->second)[c->first + " @" + name] = bytes;
  H5Sclose(space), H5Tclose(type), H5Aclose(a);
  return 0;
}
herr_t collect_object(hid_t file, char const* name, H5L_info_t const*, void* out) {
  auto* contents = static_cast<FileContents*>(out);
  hid_t const object = H5Oopen(file, name, H5P_DEFAULT);
  std::pair<std::string, FileContents*> where{std::string("/") + name, contents};
  H5Aiterate2(object, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attribute, &where);
  if (H5Iget_type(object) == H5I_DATASET) {
    hid_t const type = H5Dget_type(object), space = H5Dget_space(object);
    std::vector<char> bytes(H5Tget_size(type) * H5Sget_simple_extent_npoints(space));
    if (!bytes.empty()) H5Dread(object, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data());
    (*contents)[where.first] = bytes;
    H5Sclose(space), H5Tclose(type);
  }
  H5Oclose(object);
  return 0;
}
FileContents contents_of(std::string const& path) {
  detail::H5File f(path, "r");
  FileContents c;
  std::pair<std::string, FileContents*> root{"/", &c};
  H5Aiterate2(f.id(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attribute, &root);
  H5Lvisit(f.id(), H5_INDEX_NAME, H5_ITER_INC, collect_object, &c);
  return c;
}

double max_relative_gap(std::vector<float> const& a, std::vector<float> const& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::fabs(double(a[i]) - b[i]) / std::max(1.0, std::fabs(double(b[i]))));
  return worst;
}

}  // namespace

PROTEUS_TEST_CASE("rank count changes neither the buffer nor the outputs", "[pipeline][mpi]") {
  std::string const dir = scratch("ranks");
  RunDeck many = small_deck(dir + "/many");
  RunSummary const s = run_pipeline(TEST_EXECSPACE(), many, MPI_COMM_WORLD);
  if (world_rank() == 0) {
    RunDeck one = small_deck(dir + "/one");
    RunSummary const r = run_pipeline(TEST_EXECSPACE(), one, MPI_COMM_SELF);
    CHECK(s.ranks == world_size());
    CHECK(s.buffer_positions == r.buffer_positions);  // identical positions
    CHECK(s.candidates == r.candidates);
    CHECK(s.tokens_caught == r.tokens_caught);
    CHECK(s.buffer_positions.size() == 1024);
    CHECK(max_relative_gap(s.buffer_outputs, r.buffer_outputs) <= 1e-6);
    // The norm reduced from each rank's rows equals the norm of the gathered outputs (double sums;
    // only the device's fused multiply-adds may differ in the last bits).
    for (RunSummary const* run : {&s, &r}) {
      double squares = 0.0;
      for (float v : run->buffer_outputs) squares += double(v) * v;
      CHECK(run->buffer_output_norm == Approx(std::sqrt(squares)).epsilon(1e-12));
      CHECK(run->buffer_output_norm > 0.0);
    }
    CHECK(max_relative_gap(final_dna(s.checkpoint), final_dna(r.checkpoint)) <= 1e-6);
    CHECK(s.needles_found == s.needles);
    CHECK(chunk_rows(s.checkpoint) == chunk_rows(r.checkpoint));  // per-chunk counts too
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

PROTEUS_TEST_CASE("collective and rank-0 checkpoint writes give the same file", "[pipeline][hdf5]") {
  std::string const dir = scratch("collective");
  RunDeck together = small_deck(dir + "/together");
  together.checkpoint.interval_chunks = 3;
  together.checkpoint.keep_last = 100;
  together.checkpoint.collective_io = true;
  RunDeck gathered = together;
  gathered.checkpoint.directory = dir + "/gathered/checkpoints";
  gathered.checkpoint.collective_io = false;
  gathered.output.directory = dir + "/gathered/out";
  RunSummary const a = run_pipeline(TEST_EXECSPACE(), together, MPI_COMM_WORLD);
  RunSummary const b = run_pipeline(TEST_EXECSPACE(), gathered, MPI_COMM_WORLD);
  int ranks = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  if (world_rank() == 0) {
    std::vector<std::string> names;
    for (auto const& e : std::filesystem::directory_iterator(together.checkpoint.directory))
      if (e.path().filename().string().rfind("checkpoint_", 0) == 0)  // not the run's .proteus.lock
        names.push_back(e.path().filename().string());
    REQUIRE(names.size() >= 2);  // interval checkpoints and the final one
    for (std::string const& name : names) {
      INFO(name);
      FileContents x = contents_of(together.checkpoint.directory + "/" + name);
      FileContents y = contents_of(gathered.checkpoint.directory + "/" + name);
      std::string const how = x["/ @written_by"].data();
      CHECK(how == (detail::hdf5_is_parallel() && ranks > 1 ? "every rank (parallel HDF5, collective)" : "rank 0"));
      for (char const* differs : {"/ @written_by", "/ @deck"}) x.erase(differs), y.erase(differs);
      CHECK(x.size() > 30);
      CHECK(x == y);
    }
    // Per-chunk counts: one row per chunk in chunk order, adding up to the run's totals.
    std::vector<std::int64_t> const rows = chunk_rows(a.checkpoint);
    REQUIRE(static_cast<long>(rows.size()) == 4 * a.chunks);
    long candidates = 0, caught = 0, kept = 0;
    for (long c = 0; c < a.chunks; ++c) {
      CHECK(rows[4 * c] == c);
      candidates += rows[4 * c + 1], kept += rows[4 * c + 2], caught += rows[4 * c + 3];
    }
    CHECK(candidates == a.candidates);
    CHECK(kept == a.tokens_kept);
    CHECK(caught == a.tokens_caught);
    CHECK(b.buffer_positions == a.buffer_positions);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

PROTEUS_TEST_CASE("a restart from a checkpoint ends exactly where the uninterrupted run ends", "[pipeline][restart]") {
  std::string const dir = scratch("restart");
  RunDeck full = small_deck(dir + "/full");
  full.checkpoint.interval_chunks = 3;
  full.checkpoint.keep_last = 100;
  RunSummary const a = run_pipeline(TEST_EXECSPACE(), full, MPI_COMM_WORLD);
  // Resume from the first interval checkpoint, into other directories.
  std::string first;
  if (world_rank() == 0) {
    for (auto const& e : std::filesystem::directory_iterator(full.checkpoint.directory))
      if (e.path().filename().string().rfind("checkpoint_", 0) == 0 && (first.empty() || e.path().string() < first))
        first = e.path().string();
  }
  int n = static_cast<int>(first.size());
  MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
  first.resize(n);
  MPI_Bcast(first.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD);
  // Checkpoints are named by the chunks completed over every rank: 3 per rank after one round.
  char want[64];
  std::snprintf(want, sizeof want, "checkpoint_%09d.h5", 3 * world_size());
  REQUIRE(first.find(want) != std::string::npos);
  RunDeck resumed = small_deck(dir + "/resumed");
  resumed.checkpoint.interval_chunks = 3;
  RunSummary const b = run_pipeline(TEST_EXECSPACE(), resumed, MPI_COMM_WORLD, first);
  if (world_rank() == 0) {
    CHECK(b.resumed_from_chunk >= 0);
    CHECK(a.buffer_positions == b.buffer_positions);
    CHECK(a.buffer_outputs == b.buffer_outputs);            // bit-identical
    CHECK(final_dna(a.checkpoint) == final_dna(b.checkpoint));
  }
  // A deck that changes what the run computes is refused, naming every key that differs.
  RunDeck changed = small_deck(dir + "/changed");
  changed.checkpoint.interval_chunks = 5;  // checkpoint keeping may change
  changed.sequence.seed = 99;
  changed.pipeline.chunk_keep_ratio = 0.1;
  std::string message = "no error";
  try {
    run_pipeline(TEST_EXECSPACE(), changed, MPI_COMM_WORLD, first);
  } catch (CollectiveError const& e) {
    message = e.what();
  }
  if (world_rank() == 0) {
    CHECK(message.find("--restart: the deck differs from the checkpoint's run in [sequence] seed (7 against 99), "
                       "[pipeline] chunk_keep_ratio (0.05 against 0.1)") != std::string::npos);
    CHECK(message.find("interval_chunks") == std::string::npos);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

PROTEUS_TEST_CASE("a stop request ends every rank after one chunk with a checkpoint that resumes exactly",
                  "[pipeline][signal]") {
  std::string const dir = scratch("stop");
  RunSummary const a = run_pipeline(TEST_EXECSPACE(), small_deck(dir + "/full"), MPI_COMM_WORLD);
  auto stopped_run = [&](RunDeck const& deck) {
    detail::request_stop(SIGTERM);  // what the driver's handler records when the signal arrives
    std::pair<int, std::string> got{0, ""};
    try {
      run_pipeline(TEST_EXECSPACE(), deck, MPI_COMM_WORLD);
    } catch (StopRequested const& e) {
      got = {e.signal(), e.what()};
    }
    detail::clear_stop();
    return got;
  };
  auto const [signum, message] = stopped_run(small_deck(dir + "/stopped"));
  CHECK(signum == SIGTERM);  // on every rank: no rank is left waiting
  // Each rank finished the chunk it was scoring: one per rank.
  char want[96];
  std::snprintf(want, sizeof want, "checkpoint_%09d.h5", world_size());
  std::string const path = dir + "/stopped/checkpoints/" + want;
  if (world_rank() == 0) {
    INFO(message);
    CHECK(message.find("stopped by SIGTERM after " + std::to_string(world_size()) + " of 33 chunks; checkpoint written: " +
                       path + "; resume with --restart " + path) == 0);
  }
  RunSummary const b = run_pipeline(TEST_EXECSPACE(), small_deck(dir + "/resumed"), MPI_COMM_WORLD, path);
  if (world_rank() == 0) {
    CHECK(b.resumed_from_chunk >= 0);
    CHECK(a.buffer_positions == b.buffer_positions);
    CHECK(a.buffer_outputs == b.buffer_outputs);  // bit-identical
    CHECK(final_dna(a.checkpoint) == final_dna(b.checkpoint));
  }
  // Without checkpoints in the deck the run still ends on every rank, and says there is none.
  RunDeck bare = small_deck(dir + "/bare");
  bare.checkpoint.at_end = false;
  auto const [bare_signum, bare_message] = stopped_run(bare);
  CHECK(bare_signum == SIGTERM);
  if (world_rank() == 0) CHECK(bare_message.find("no checkpoint: [checkpoint] interval_chunks = 0") != std::string::npos);
  MPI_Barrier(MPI_COMM_WORLD);
}

PROTEUS_TEST_CASE("two runs into one output directory: the second is refused by name", "[pipeline][lock]") {
  std::string const dir = scratch("lock");
  RunDeck d = small_deck(dir);
  std::optional<detail::DirectoryLock> other;  // another run holding the directory
  if (world_rank() == 0) other.emplace(d.output.directory, "test");
  std::string message = "no error";
  try {
    run_pipeline(TEST_EXECSPACE(), d, MPI_COMM_WORLD);
  } catch (CollectiveError const& e) {
    message = e.what();
  }
  if (world_rank() == 0)
    CHECK(message.find("[output] directory: another run is using the directory '" + d.output.directory + "'") !=
          std::string::npos);
  other.reset();
  MPI_Barrier(MPI_COMM_WORLD);
}

PROTEUS_TEST_CASE("needles in a 1M-token haystack reach the buffer and a probe retrieves them", "[pipeline][needles]") {
  std::string const dir = scratch("needles");
  RunDeck d;
  d.path = dir + "/deck.in";
  d.model.embed_dim = 64;
  d.model.num_heads = 2;  // head width 32
  d.model.seed = 11;
  d.sequence.tokens = 1 << 20;
  d.sequence.needles = 16;
  d.sequence.needle_similarity = 0.9;
  d.pipeline.chunk_tokens = 16384;
  d.pipeline.chunk_budget = 512;
  d.pipeline.buffer_tokens = 2048;
  d.pipeline.buffer_keep_ratio = 1.0;
  d.checkpoint.at_end = false;
  d.output.directory = dir + "/out";
  d.output.progress_seconds = 1e6;
  RunSummary const s = run_pipeline(TEST_EXECSPACE(), d, MPI_COMM_WORLD);
  if (world_rank() != 0) return;
  INFO("needles found " << s.needles_found << " of " << s.needles << ", buffer " << s.buffer_positions.size());
  REQUIRE(s.needles == 16);
  CHECK(s.needles_found == s.needles);  // 100% retrieval into the buffer

  // A probe placed after the whole sequence, built so that each head's query (RoPE at its own
  // position) points at the needle's key (RoPE at the needle's original position).
  CausalGeneticMultiheadAttention model(TEST_EXECSPACE(), d.model);
  SyntheticSource source(d.sequence, d.model.embed_dim, model.dna());
  std::vector<Position> buf(s.buffer_positions.begin(), s.buffer_positions.end());
  TokenMatrix xb("xb", buf.size(), d.model.embed_dim);
  source.read_rows(TEST_EXECSPACE(), buf, xb);
  test::Matrix x = test::to_host_matrix(xb);
  auto const& w = model.weights();
  test::Matrix wqkv = test::to_host_matrix(w.qkv_weight);
  std::vector<double> bqkv = test::to_host_vector(w.qkv_bias);
  int const E = 64, H = 2, D = 32;
  test::Matrix kv = test::linear(x, wqkv, bqkv);  // [S x 3E]: q | k | v
  Position const probe_pos = d.sequence.tokens;
  double weight_sum = 0.0;
  for (Position needle : s.needle_positions) {
    size_t const row = std::lower_bound(buf.begin(), buf.end(), needle) - buf.begin();
    REQUIRE(buf[row] == needle);
    // Target query per head: c * R(needle - probe) k_needle, so that after RoPE at the probe's
    // position q . k_needle = c |k|^2; solve W_q x = target - b_q.
    std::vector<double> target(E);
    for (int h = 0; h < H; ++h) {
      std::vector<double> k(kv[row].begin() + E + h * D, kv[row].begin() + E + (h + 1) * D);
      double kk = 0;
      for (double v : k) kk += v * v;
      test::rope_inplace(k.data(), D, static_cast<double>(needle - probe_pos), d.model.rope_base);
      for (int j = 0; j < D; ++j) target[h * D + j] = 30.0 * std::sqrt(double(D)) / kk * k[j];
    }
    test::Matrix a(E, std::vector<double>(E + 1));
    for (int i = 0; i < E; ++i) {
      for (int j = 0; j < E; ++j) a[i][j] = wqkv[i][j];
      a[i][E] = target[i] - bqkv[i];
    }
    for (int c = 0; c < E; ++c) {  // Gaussian elimination with partial pivoting
      int p = c;
      for (int i = c + 1; i < E; ++i)
        if (std::fabs(a[i][c]) > std::fabs(a[p][c])) p = i;
      std::swap(a[c], a[p]);
      for (int i = 0; i < E; ++i)
        if (i != c) {
          double const f = a[i][c] / a[c][c];
          for (int j = c; j <= E; ++j) a[i][j] -= f * a[c][j];
        }
    }
    std::vector<double> probe(E);
    for (int i = 0; i < E; ++i) probe[i] = a[i][E] / a[i][i];
    // The probe's attention over the whole buffer, per head, in double.
    test::Matrix q = test::linear({probe}, wqkv, bqkv);
    double on_needle = 0.0;
    for (int h = 0; h < H; ++h) {
      std::vector<double> qh(q[0].begin() + h * D, q[0].begin() + (h + 1) * D);
      test::rope_inplace(qh.data(), D, static_cast<double>(probe_pos), d.model.rope_base);
      std::vector<double> score(buf.size());
      double mx = -1e300;
      for (size_t j = 0; j < buf.size(); ++j) {
        std::vector<double> k(kv[j].begin() + E + h * D, kv[j].begin() + E + (h + 1) * D);
        test::rope_inplace(k.data(), D, static_cast<double>(buf[j]), d.model.rope_base);
        double dot = 0;
        for (int c = 0; c < D; ++c) dot += qh[c] * k[c];
        mx = std::max(mx, score[j] = dot / std::sqrt(double(D)));
      }
      double z = 0;
      for (double& v : score) z += (v = std::exp(v - mx));
      on_needle += score[row] / z / H;
    }
    weight_sum += on_needle;
    CHECK(on_needle > 0.5);  // most of the probe's attention lands on its needle
  }
  WARN("mean attention weight of a probe on its needle: " << weight_sum / s.needle_positions.size());
}

// The float generator behind the synthetic tokens is a standard normal: mean, variance and the
// Kolmogorov-Smirnov distance to Phi over 2^20 draws, each bound at about 5 standard errors
// (KS: 1.95/sqrt(n) is its 0.1% quantile).
PROTEUS_TEST_CASE("synthetic noise is standard normal", "[pipeline][source]") {
  std::uint64_t const key = detail::stream_key(11, detail::stream_tokens);
  long const n = 1L << 20;
  std::vector<double> z(n);
  double mean = 0.0, square = 0.0;
  for (long i = 0; i < n; ++i) {
    z[i] = detail::standard_normal_float_at(key, std::uint64_t(i));
    mean += z[i] / n;
    square += z[i] * z[i] / n;
  }
  std::sort(z.begin(), z.end());
  double ks = 0.0;
  for (long i = 0; i < n; ++i) {
    double const phi = 0.5 * std::erfc(-z[i] / std::sqrt(2.0));
    ks = std::max({ks, std::fabs(phi - double(i) / n), std::fabs(phi - double(i + 1) / n)});
  }
  CHECK(std::fabs(mean) < 5.0 / std::sqrt(double(n)));
  CHECK(std::fabs(square - mean * mean - 1.0) < 5.0 * std::sqrt(2.0 / n));
  CHECK(ks < 1.95 / std::sqrt(double(n)));
  CHECK(z.front() > -5.9);
  CHECK(z.back() < 5.9);
}

// The synthetic source's rule (sequence_source.hpp) evaluated on the host: noise, or along a
// needle's unit prototype; read() of any rows and read_rows() of scattered positions give it. An
// even width draws a pair of entries per lane, an odd one an entry per lane.
PROTEUS_TEST_CASE("synthetic tokens equal their rule evaluated on the host", "[pipeline][source]") {
  RunDeck d = small_deck(scratch("synthetic"));
  d.sequence.needle_similarity = 0.7;
  int const E = GENERATE(32, 33);
  DnaState const dna = DnaState::allocate(4, E);
  dna.initialise(TEST_EXECSPACE(), 5, 0.02f);
  SyntheticSource const src(d.sequence, E, dna);
  test::Matrix const protos = test::to_host_matrix(dna.prototypes);
  std::vector<Position> const needles = src.needles();
  REQUIRE(needles.size() == 6);
  // The noise from the same two 24-bit uniforms as the source draws, in double precision: entry
  // k of the stream is the cosine (k even) or the sine (k odd) of pair k / 2.
  std::uint64_t const key = detail::stream_key(d.sequence.seed, detail::stream_tokens);
  auto expected = [&](Position t, int j) {
    std::uint64_t const k = std::uint64_t(t) * E + j, bits = detail::hash_at(key, k / 2);
    double const u1 = (double(bits >> 40) + 0.5) / 16777216.0, u2 = (double((bits >> 16) & 0xFFFFFF) + 0.5) / 16777216.0;
    double const angle = 2.0 * M_PI * u2;
    double const noise = std::sqrt(-2.0 * std::log(u1)) * (k % 2 == 0 ? std::cos(angle) : std::sin(angle));
    auto const at = std::find(needles.begin(), needles.end(), t);
    if (at == needles.end()) return noise;
    std::vector<double> const& u = protos[(at - needles.begin()) % protos.size()];
    double const norm = std::sqrt(std::inner_product(u.begin(), u.end(), u.begin(), 0.0));
    double const s = d.sequence.needle_similarity;
    return s * std::sqrt(double(E)) * (u[j] / norm) + std::sqrt(1 - s * s) * noise;
  };
  // A window around the second needle (read), and every needle with its neighbours (read_rows).
  long const begin = needles[1] - 37, rows = 100;
  TokenMatrix window("window", rows, E);
  src.read(TEST_EXECSPACE(), begin, window);
  std::vector<Position> scattered;
  for (Position p : needles) scattered.insert(scattered.end(), {p - 1, p, p + 1});
  TokenMatrix picked("picked", scattered.size(), E);
  src.read_rows(TEST_EXECSPACE(), scattered, picked);
  test::Matrix const got_window = test::to_host_matrix(window), got_picked = test::to_host_matrix(picked);
  // Evaluated in float: 2 pi u2 rounded to float is off by up to 4e-7 (absolute), times a radius
  // below 5.9; log, sqrt, cos and the needle's sum add a few float ulps. 1e-5 of (1 + |x|) bounds both.
  double worst = 0.0;
  for (long i = 0; i < rows; ++i)
    for (int j = 0; j < E; ++j)
      worst = std::max(worst, std::fabs(got_window[i][j] - expected(begin + i, j)) /
                                  (1 + std::fabs(expected(begin + i, j))));
  for (size_t i = 0; i < scattered.size(); ++i)
    for (int j = 0; j < E; ++j)
      worst = std::max(worst, std::fabs(got_picked[i][j] - expected(scattered[i], j)) /
                                  (1 + std::fabs(expected(scattered[i], j))));
  CHECK(worst < 1e-5);
}

PROTEUS_TEST_CASE("an HDF5 sequence gives the same buffer as the same tokens generated", "[pipeline][hdf5]") {
  std::string const dir = scratch("hdf5");
  RunDeck synthetic = small_deck(dir + "/synthetic");
  // Write the synthetic tokens to a file [T x E] (rank 0), then read them back as the source.
  std::string const file = dir + "/tokens.h5";
  if (world_rank() == 0) {
    CausalGeneticMultiheadAttention model(TEST_EXECSPACE(), synthetic.model);
    SyntheticSource src(synthetic.sequence, synthetic.model.embed_dim, model.dna());
    TokenMatrix x("x", src.tokens(), src.embed_dim());
    src.read(TEST_EXECSPACE(), 0, x);
    auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), x);
    detail::H5File f(file, "w");
    f.write("/embeddings", {static_cast<hsize_t>(src.tokens()), static_cast<hsize_t>(src.embed_dim())}, h.data());
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  RunDeck from_file = small_deck(dir + "/file");
  from_file.sequence.source = "hdf5";
  from_file.sequence.file = file;
  RunSummary const a = run_pipeline(TEST_EXECSPACE(), synthetic, MPI_COMM_WORLD);
  RunSummary const b = run_pipeline(TEST_EXECSPACE(), from_file, MPI_COMM_WORLD);
  // The file knows no needles, but the user can name the positions to look for (facts planted in
  // real data): here the synthetic run's needles, so recall must be the same.
  RunDeck named = small_deck(dir + "/named");
  named.sequence = from_file.sequence;
  named.sequence.needle_positions.assign(a.needle_positions.begin(), a.needle_positions.end());
  RunSummary const c = run_pipeline(TEST_EXECSPACE(), named, MPI_COMM_WORLD);
  if (world_rank() == 0) {
    CHECK(b.tokens == a.tokens);
    CHECK(b.buffer_positions == a.buffer_positions);
    CHECK(b.buffer_outputs == a.buffer_outputs);
    CHECK(b.needles == 0);
    REQUIRE(a.needles == 6);
    CHECK(c.needles == a.needles);
    CHECK(c.needles_found == a.needles_found);
    CHECK(c.needle_positions == a.needle_positions);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// A chunk's nucleus (kept tokens by score, best first, ties by position; softmax; the prefix sums
// below top_p, plus one; at most `budget`) against a double-precision host reference, for chunks
// of several sizes through one set of reused buffers, one with no kept token, one empty; sorted by
// itself and taken from ranked keys.
PROTEUS_TEST_CASE("nucleus candidates equal a host reference through reused buffers", "[pipeline][nucleus]") {
  std::mt19937 rng(7);
  NucleusBuffers buffers, ranked_buffers;  // ranked_buffers: the same from ranked keys (own buffers)
  struct Chunk {
    long n;
    double keep_fraction, top_p;
    long budget;
  };
  for (Chunk const& c : {Chunk{3000, 0.7, 0.9, 4096}, Chunk{500, 0.5, 0.5, 64}, Chunk{4000, 0.9, 0.99, 300},
                         Chunk{200, 0.0, 0.9, 100}, Chunk{1, 1.0, 0.9, 10}, Chunk{0, 1.0, 0.9, 10}}) {
    INFO("chunk of " << c.n);
    std::vector<float> score(c.n);
    std::vector<std::uint8_t> kept(c.n);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (long i = 0; i < c.n; ++i) {
      score[i] = std::round(u(rng) * 64.0f) / 64.0f;  // ties between positions
      kept[i] = u(rng) < c.keep_fraction ? 1 : 0;
    }
    TokenVector importance("importance", c.n);
    MaskVector keep("keep", c.n);
    auto hi = Kokkos::create_mirror_view(importance);
    auto hk = Kokkos::create_mirror_view(keep);
    for (long i = 0; i < c.n; ++i) {
      hi(i) = score[i];
      hk(i) = kept[i];
    }
    Kokkos::deep_copy(importance, hi);
    Kokkos::deep_copy(keep, hk);
    Candidates const got = nucleus_candidates(TEST_EXECSPACE(), importance, keep, 1000, c.top_p, c.budget, buffers);
    // The same from every token's keys ranked beforehand, as the token selection leaves them (in a
    // buffer longer than the chunk, whose extra keys must be ignored).
    std::vector<std::uint64_t> all(c.n);
    for (long i = 0; i < c.n; ++i) all[i] = detail::descending_score_key(score[i], i);
    std::sort(all.begin(), all.end());
    Kokkos::View<std::uint64_t*, MemSpace> ranked("ranked", c.n + 5);
    auto hr = Kokkos::create_mirror_view(ranked);
    std::copy(all.begin(), all.end(), hr.data());
    Kokkos::deep_copy(ranked, hr);
    start_nucleus(TEST_EXECSPACE(), importance, keep, c.top_p, c.budget, ranked_buffers, ranked);
    TEST_EXECSPACE().fence();
    Candidates const from_ranked = finish_nucleus(ranked_buffers, 1000, c.budget);
    CHECK(from_ranked.positions == got.positions);
    CHECK(from_ranked.scores == got.scores);
    auto const keys = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), ranked_buffers.keys);
    long const kept_count = std::count(kept.begin(), kept.end(), std::uint8_t(1));
    CHECK(std::is_sorted(keys.data(), keys.data() + c.n));
    CHECK(std::count(keys.data(), keys.data() + c.n, ~std::uint64_t(0)) == c.n - kept_count);

    std::vector<long> order;
    for (long i = 0; i < c.n; ++i)
      if (kept[i]) order.push_back(i);
    std::stable_sort(order.begin(), order.end(), [&](long a, long b) { return score[a] > score[b]; });
    std::vector<double> prefix(order.size());
    double z = 0.0;
    for (size_t k = 0; k < order.size(); ++k) prefix[k] = z += std::exp(double(score[order[k]]) - score[order[0]]);
    long const below = std::count_if(prefix.begin(), prefix.end(), [&](double p) { return p < c.top_p * z; });
    long const take = order.empty() ? 0 : std::min({below + 1, static_cast<long>(order.size()), c.budget});
    REQUIRE(static_cast<long>(got.size()) == take);
    for (long k = 0; k < take; ++k) {
      CHECK(got.positions[k] == 1000 + order[k]);
      CHECK(got.scores[k] == score[order[k]]);
    }
  }
}
