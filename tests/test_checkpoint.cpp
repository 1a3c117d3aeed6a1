// HDF5 checkpoints and sources under bad input: each failure names the file and the dataset;
// a failed write leaves the previous checkpoint untouched.
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cmath>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "proteus/checkpoint.hpp"
#include "proteus/deck.hpp"
#include "proteus/detail/atomic_file.hpp"
#include "proteus/detail/directory_lock.hpp"
#include "proteus/detail/hdf5_io.hpp"
#include "proteus/error.hpp"
#include "proteus/sequence_source.hpp"
#include "test_space.hpp"

using namespace proteus;
namespace fs = std::filesystem;

namespace {
std::string tmp(std::string const& name) {
  auto const dir = fs::temp_directory_path() / ("proteus_ckpt_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (Error const& e) {
    return e.what();
  }
  return "no error";
}
RunDeck deck_for(std::string const& dir) {
  RunDeck d;
  d.model.embed_dim = 16;
  d.model.num_heads = 2;
  d.sequence.tokens = 4096;
  d.pipeline.chunk_tokens = 1024;
  d.checkpoint.directory = dir;
  return d;
}
RankState read_state(std::string const& path, RunDeck const& d) {
  return read_rank_state(path, MPI_COMM_SELF, d.model.resolved(), ChunkGrid{d.sequence.tokens, d.pipeline.chunk_tokens});
}
// A checkpoint of a small model with a made-up run state.
std::string make_checkpoint(std::string const& name, RunDeck const& d) {
  CausalGeneticMultiheadAttention model(ExecSpace(), d.model);
  RankState s;
  s.dna.reset(model.config().num_gates, d.model.embed_dim);
  s.next_chunk = 2;
  s.candidates.positions = {5, 900, 1500};
  s.candidates.scores = {0.5f, 0.25f, 0.75f};
  s.chunk_log = {{0, 1, 700, 30}, {1, 2, 650, 41}};
  CheckpointContent c;
  c.deck_text = deck_to_ini(d);
  c.model = &model;
  c.state = &s;
  c.grid = ChunkGrid{4096, d.pipeline.chunk_tokens};
  c.collective_io = d.checkpoint.collective_io;
  std::string const path = tmp(name);
  write_checkpoint(path, MPI_COMM_SELF, c);
  return path;
}
}  // namespace

PROTEUS_TEST_CASE("a checkpoint round-trips the run state and the model", "[checkpoint]") {
  RunDeck const d = deck_for(tmp("ck"));
  std::string const path = make_checkpoint("roundtrip.h5", d);
  RankState const s = read_state(path, d);
  CHECK(s.next_chunk == 2);
  CHECK(s.candidates.positions == std::vector<Position>{5, 900, 1500});
  CHECK(s.candidates.scores == std::vector<float>{0.5f, 0.25f, 0.75f});
  REQUIRE(s.chunk_log.size() == 2);
  CHECK(s.chunk_log[1].chunk == 1);
  CHECK(s.chunk_log[1].candidates == 2);
  CHECK(s.chunk_log[1].tokens_kept == 650);
  CHECK(s.chunk_log[1].tokens_caught == 41);
  Config other = d.model;
  other.seed = 99;  // different initial weights, then loaded from the file
  CausalGeneticMultiheadAttention loaded(TEST_EXECSPACE(), other);
  load_model(TEST_EXECSPACE(), path, loaded);
  CausalGeneticMultiheadAttention original(TEST_EXECSPACE(), d.model);
  auto a = Kokkos::create_mirror_view_and_copy(HostSpace(), loaded.weights().qkv_weight);
  auto b = Kokkos::create_mirror_view_and_copy(HostSpace(), original.weights().qkv_weight);
  for (size_t i = 0; i < a.size(); ++i) REQUIRE(a.data()[i] == b.data()[i]);
  CHECK_FALSE(fs::exists(path + ".tmp"));
}

PROTEUS_TEST_CASE("bad checkpoints give errors naming the file and dataset", "[checkpoint][errors]") {
  RunDeck const d = deck_for(tmp("ck"));
  std::string const good = make_checkpoint("good.h5", d);
  CHECK(error_of([&] { read_state(tmp("missing.h5"), d); }) ==
        tmp("missing.h5") + ": file does not exist");
  // Truncated file.
  std::string const cut = tmp("truncated.h5");
  fs::copy_file(good, cut, fs::copy_options::overwrite_existing);
  fs::resize_file(cut, fs::file_size(cut) / 3);
  CHECK(error_of([&] { read_state(cut, d); }).find(cut + ": ") == 0);
  // Not HDF5 at all.
  std::string const text = tmp("text.h5");
  std::ofstream(text) << "not hdf5";
  CHECK(error_of([&] { load_model(TEST_EXECSPACE(), text, *new CausalGeneticMultiheadAttention(TEST_EXECSPACE(), d.model)); }) ==
        text + ": not a readable HDF5 file (truncated or corrupt?)");
  // Wrong format version, missing dataset, wrong shape, wrong type: edit copies of the good file.
  auto edited = [&](std::string const& name, auto&& edit) {
    std::string const p = tmp(name);
    auto f = detail::H5File::edit(good, p);
    edit(f);
    f.close();
    return p;
  };
  std::string const version = edited("version.h5", [](detail::H5File& f) {
    H5Adelete(f.id(), "format_version");
    f.attr("/", "format_version", 99LL);
  });
  CHECK(error_of([&] { read_state(version, d); }).find("format_version 99 is not the supported 1") !=
        std::string::npos);
  std::string const missing = edited("missing_ds.h5", [](detail::H5File& f) { H5Ldelete(f.id(), "/dna/usage", H5P_DEFAULT); });
  CausalGeneticMultiheadAttention model(TEST_EXECSPACE(), d.model);
  CHECK(error_of([&] { load_model(TEST_EXECSPACE(), missing, model); }) == missing + ":/dna/usage: dataset is missing");
  std::string const shape = edited("shape.h5", [](detail::H5File& f) {
    H5Ldelete(f.id(), "/weights/out_bias", H5P_DEFAULT);
    std::vector<float> v(7, 0.f);
    f.write("/weights/out_bias", {7}, v.data());
  });
  CHECK(error_of([&] { load_model(TEST_EXECSPACE(), shape, model); }) ==
        shape + ":/weights/out_bias: shape [7] does not match the expected [16] (0 = any)");
  std::string const type = edited("type.h5", [](detail::H5File& f) {
    H5Ldelete(f.id(), "/weights/out_bias", H5P_DEFAULT);
    std::vector<std::int32_t> v(16, 0);
    f.write("/weights/out_bias", {16}, v.data());
  });
  CHECK(error_of([&] { load_model(TEST_EXECSPACE(), type, model); }) ==
        type + ":/weights/out_bias: wrong type: expected floating point data");
  // Values a model cannot run with: NaN, Inf, absurd magnitudes, in weights or DNA.
  for (auto const& bad : std::vector<std::pair<std::string, float>>{
           {"/weights/out_bias", std::nanf("")}, {"/weights/qkv_weight", INFINITY}, {"/dna/prototypes", 3e38f}}) {
    std::string const& dataset = bad.first;  // named, not a structured binding: lambdas capture it (C++17)
    float const value = bad.second;
    std::string const p = edited("values.h5", [&](detail::H5File& f) {
      std::vector<float> v;
      auto const dims = f.read(dataset, std::vector<hsize_t>(dataset == "/weights/out_bias" ? 1 : 2, 0), v);
      v[v.size() / 2] = value;
      H5Ldelete(f.id(), dataset.c_str(), H5P_DEFAULT);
      f.write(dataset, dims, v.data());
    });
    INFO(dataset);
    CHECK(error_of([&] { load_model(TEST_EXECSPACE(), p, model); }).find(p + ":" + dataset + ": value ") == 0);
  }
  // A run state that makes no sense is not resumed from.
  std::string const chain = edited("chain.h5", [](detail::H5File& f) {
    std::vector<double> v;
    auto const dims = f.read("/run/dna_chain", {0, 0}, v);
    v[1] = std::nan("");
    H5Ldelete(f.id(), "/run/dna_chain", H5P_DEFAULT);
    f.write("/run/dna_chain", dims, v.data());
  });
  CHECK(error_of([&] { read_state(chain, d); }) == chain + ":/run/dna_chain: holds a value that is not finite");
  std::string const far = edited("far.h5", [](detail::H5File& f) {
    std::vector<std::int64_t> v;
    auto const dims = f.read("/run/candidate_positions", {0}, v);
    v[0] = 1 << 30;
    H5Ldelete(f.id(), "/run/candidate_positions", H5P_DEFAULT);
    f.write("/run/candidate_positions", dims, v.data());
  });
  CHECK(error_of([&] { read_state(far, d); }).find(far + ":/run/candidate_positions: position 1073741824 is outside") == 0);
  // A checkpoint from a different configuration.
  RunDeck wider = d;
  wider.model.embed_dim = 32;
  CHECK(error_of([&] { read_state(good, wider); })
            .find(good + ":/config @embed_dim: checkpoint has 16 but the deck has 32 ([model] embed_dim)") == 0);
}

TEST_CASE("a flipped bit inside the weights is caught by the dataset's checksum", "[checkpoint][checksum]") {
  RunDeck const d = deck_for(tmp("sum"));
  CausalGeneticMultiheadAttention model(ExecSpace(), d.model);
  std::string const path = tmp("weights_sum.h5");
  write_model_file(path, model);
  CausalGeneticMultiheadAttention other(ExecSpace(), d.model);
  CHECK(error_of([&] { load_model(ExecSpace(), path, other); }) == "no error");
  // Find the weights' bytes in the file and flip one mantissa bit: a value that still looks fine.
  auto const w = Kokkos::create_mirror_view_and_copy(HostSpace(), model.weights().qkv_weight);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  size_t const at = bytes.find(std::string(reinterpret_cast<char const*>(w.data()), 64));
  REQUIRE(at != std::string::npos);
  bytes[at + 9] = static_cast<char>(bytes[at + 9] ^ 0x04);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  CHECK(error_of([&] { load_model(ExecSpace(), path, other); }) ==
        path + ":/weights/qkv_weight: read failed: checksum mismatch or truncated file (damaged data)");
}

TEST_CASE("a failed checkpoint write leaves the previous file untouched", "[checkpoint][atomic]") {
  RunDeck const d = deck_for(tmp("ck"));
  std::string const path = make_checkpoint("atomic.h5", d);
  auto const before = fs::file_size(path);
  // The temporary name is taken by a directory: the write must fail before touching `path`.
  fs::create_directories(path + ".tmp");
  fs::create_directories(path + ".tmp/blocker");
  CHECK_THROWS_AS(make_checkpoint("atomic.h5", d), Error);
  CHECK(fs::file_size(path) == before);
  CHECK_NOTHROW(read_state(path, d));
  fs::remove_all(path + ".tmp");
}

TEST_CASE("a text file that cannot be written whole is not renamed into place", "[atomic][disk_full]") {
  // A file-size limit makes the write fail part way, as a full disk does: the flushed stream
  // reports it, the temporary is removed and the earlier file of that name stays.
  std::string const path = tmp("summary.json");
  detail::write_text_atomically(path, "{\"before\": 1}\n");
  struct rlimit saved;
  REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
  auto const old_handler = std::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of a signal
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
  std::string message = "no error";
  try {
    detail::write_text_atomically(path, std::string(100000, 'x'));
  } catch (Error const& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  CHECK(message.find(detail::temporary_name(path) + ": write failed") == 0);
  CHECK_FALSE(fs::exists(detail::temporary_name(path)));
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text == "{\"before\": 1}\n");
}

TEST_CASE("one run per directory: a second lock is refused until the first is released", "[lock]") {
  std::string const dir = tmp("locked");
  std::string message = "no error";
  {
    detail::DirectoryLock const first(dir, "[output] directory");
    try {
      detail::DirectoryLock const second(dir, "[output] directory");
    } catch (Error const& e) {
      message = e.what();
    }
  }
  CHECK(message.find("[output] directory: another run is using the directory '" + dir + "'") == 0);
  CHECK_NOTHROW(detail::DirectoryLock(dir, "[output] directory"));  // released with the first
}

PROTEUS_TEST_CASE("HDF5 sequence sources check file, dataset, rank and type", "[source][errors]") {
  std::string const path = tmp("tokens.h5");
  {
    detail::H5File f(path, "w");
    std::vector<float> x(100 * 16);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
    f.write("/embeddings", {100, 16}, x.data());
    std::vector<float> flat(10);
    f.write("/flat", {10}, flat.data());
    std::vector<std::int32_t> ints(20);
    f.write("/ints", {10, 2}, ints.data());
    f.close();
  }
  Hdf5Source src(path, "embeddings");
  CHECK(src.tokens() == 100);
  CHECK(src.embed_dim() == 16);
  TokenMatrix rows("rows", 3, 16);
  src.read_rows(TEST_EXECSPACE(), {2, 50, 99}, rows);
  auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), rows);
  CHECK(h(1, 3) == 50 * 16 + 3);
  CHECK(h(2, 15) == 99 * 16 + 15);
  TokenMatrix block("block", 10, 16);
  src.read(TEST_EXECSPACE(), 90, block);
  auto hb = Kokkos::create_mirror_view_and_copy(HostSpace(), block);
  CHECK(hb(9, 0) == 99 * 16);
  CHECK(error_of([&] { Hdf5Source(tmp("nope.h5"), "x"); }) == tmp("nope.h5") + ": sequence file does not exist");
  CHECK(error_of([&] { Hdf5Source(path, "missing"); }) == path + ":missing: dataset not found");
  CHECK(error_of([&] { Hdf5Source(path, "flat"); }).find(path + ":flat: expected a 2-D dataset") == 0);
  CHECK(error_of([&] { Hdf5Source(path, "ints"); }) == path + ":ints: expected floating-point data");
}
