// The inspection report of a proteus HDF5 file, and its text and JSON forms.
#include "proteus/inspect.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "proteus/checkpoint.hpp"
#include "proteus/detail/hdf5_io.hpp"
#include "proteus/error.hpp"

namespace proteus {

using detail::H5File;

namespace {
// min, mean, max of column `col` of [n x 4] rows.
void column_stats(std::vector<std::int64_t> const& rows, int col, double out[3]) {
  size_t const n = rows.size() / 4;
  if (n == 0) return;
  out[0] = out[2] = static_cast<double>(rows[col]);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    double const v = static_cast<double>(rows[4 * i + col]);
    out[0] = std::min(out[0], v), out[2] = std::max(out[2], v), sum += v;
  }
  out[1] = sum / n;
}

// The DNA of a checkpoint (the joined DNA if present) or the last snapshot of a dump: prototypes
// [G x E] into protos, usage and confidence into r.
void read_dna(H5File const& f, DnaReport& r, std::vector<float>& protos) {
  std::vector<hsize_t> dims;
  if (f.exists("/dna")) {
    // A weights file (write_model_file, the Python extension's save_hdf5, tools/torch_to_h5.py) has
    // the model without run state.
    r.kind = f.exists("/run") ? "checkpoint" : "model";
    r.dna_group = f.exists("/dna_final") ? "/dna_final" : "/dna";
    dims = f.read(r.dna_group + "/prototypes", {0, 0}, protos);
    std::vector<float> u, c;
    f.read(r.dna_group + "/usage", {dims[0]}, u);
    f.read(r.dna_group + "/confidence", {dims[0]}, c);
    r.usage.assign(u.begin(), u.end());
    r.confidence.assign(c.begin(), c.end());
  } else if (f.exists("/prototypes")) {
    r.kind = "dna_dump";
    r.dna_group = "/prototypes (last snapshot)";
    std::vector<float> all;
    auto d3 = f.read("/prototypes", {0, 0, 0}, all);
    r.snapshots = static_cast<long long>(d3[0]);
    dims = {d3[1], d3[2]};
    protos.assign(all.end() - d3[1] * d3[2], all.end());
    std::vector<float> u;
    auto du = f.read("/usage", {d3[0], d3[1]}, u);
    r.usage.assign(u.end() - du[1], u.end());
  } else {
    fail(f.path(), "neither a checkpoint or weights file (/dna) nor a DNA dump (/prototypes)");
  }
  r.gates = static_cast<int>(dims[0]);
  r.embed = static_cast<int>(dims[1]);
}

// Prototype norms, pairwise cosines and the usage histogram.
void dna_geometry(std::vector<float> const& protos, DnaReport& r) {
  int const g = r.gates, e = r.embed;
  for (int i = 0; i < g; ++i) {
    double s = 0;
    for (int j = 0; j < e; ++j) s += double(protos[i * e + j]) * protos[i * e + j];
    r.norms.push_back(std::sqrt(s));
  }
  long pairs = 0;
  for (int a = 0; a < g; ++a)
    for (int b = a + 1; b < g; ++b) {
      double dot = 0;
      for (int j = 0; j < e; ++j) dot += double(protos[a * e + j]) * protos[b * e + j];
      double const cs = dot / std::max(1e-30, r.norms[a] * r.norms[b]);
      r.mean_abs_cos += std::fabs(cs);
      ++pairs;
      if (cs > r.most_similar_cos) r.most_similar_cos = cs, r.most_similar[0] = a, r.most_similar[1] = b;
      if (cs < r.most_distinct_cos) r.most_distinct_cos = cs, r.most_distinct[0] = a, r.most_distinct[1] = b;
    }
  if (pairs) r.mean_abs_cos /= pairs;
  if (!r.usage.empty()) {
    r.usage_min = *std::min_element(r.usage.begin(), r.usage.end());
    r.usage_max = *std::max_element(r.usage.begin(), r.usage.end());
  }
  r.usage_histogram.assign(10, 0);
  double const width = (r.usage_max - r.usage_min) / 10;
  for (double u : r.usage) ++r.usage_histogram[std::min(9, width > 0 ? int((u - r.usage_min) / width) : 0)];
}

// The gate -> head graph: gates per head, generalists (>= 2x the mean) and specialists (one gate).
void gate_graph(H5File const& f, DnaReport& r) {
  std::vector<std::int32_t> map;
  f.read("/gate_to_head", {static_cast<hsize_t>(r.gates)}, map);
  r.heads = static_cast<int>(f.attr_int("/config", "num_heads"));
  r.gates_per_head.assign(r.heads, 0);
  for (int h : map) {
    if (h < 0 || h >= r.heads) fail(f.where("/gate_to_head"), "entry " + std::to_string(h) + " is not a head");
    ++r.gates_per_head[h];
  }
  double const mean = double(r.gates) / r.heads;
  for (int h = 0; h < r.heads; ++h) {
    if (r.gates_per_head[h] >= 2 * mean && r.gates_per_head[h] > 1) r.generalists.push_back(h);
    if (r.gates_per_head[h] == 1) r.specialists.push_back(h);
  }
}

// Tokens caught, per-chunk statistics and the best buffer positions of a checkpoint.
void run_statistics(H5File const& f, DnaReport& r, int top) {
  if (f.exists("/statistics")) r.tokens_caught = f.attr_int("/statistics", "tokens_caught");
  r.tokens = f.attr_int("/", "tokens");
  r.chunks_total = f.attr_int("/", "chunks_total");
  if (f.exists("/statistics/chunks")) {
    std::vector<std::int64_t> rows;
    f.read("/statistics/chunks", {0, 4}, rows);
    r.chunks_processed = static_cast<long long>(rows.size() / 4);
    column_stats(rows, 1, r.candidates_stats);
    column_stats(rows, 3, r.caught_stats);
    size_t busiest = 0;  // first row with the most caught tokens
    for (size_t i = 0; i < rows.size() / 4; ++i)
      if (rows[4 * i + 3] > rows[4 * busiest + 3]) busiest = i;
    if (!rows.empty()) r.busiest_chunk = rows[4 * busiest];
  }
  if (!f.exists("/buffer")) return;
  std::vector<std::int64_t> pos;
  std::vector<float> score;
  f.read("/buffer/positions", {0}, pos);
  f.read("/buffer/scores", {pos.size()}, score);
  std::vector<size_t> order(pos.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] > score[b]; });
  for (size_t i = 0; i < std::min<size_t>(top, order.size()); ++i)
    r.top_buffer.emplace_back(pos[order[i]], score[order[i]]);
}

}  // namespace

DnaReport inspect_file(std::string const& path, int top) {
  H5File f(path, "r");
  DnaReport r;
  r.file = path;
  r.version = f.attr_int("/", "format_version");
  if (r.version != checkpoint_format_version)
    fail(path, "format_version " + std::to_string(r.version) + " is not the supported " +
                   std::to_string(checkpoint_format_version));
  std::vector<float> protos;
  read_dna(f, r, protos);
  dna_geometry(protos, r);
  if (r.kind == "dna_dump") return r;
  gate_graph(f, r);
  if (r.kind == "checkpoint") run_statistics(f, r, top);
  return r;
}

std::string to_text(DnaReport const& r) {
  std::string out;
  char line[512];
  auto print = [&](auto... args) {
    std::snprintf(line, sizeof line, args...);
    out += line;
  };
  auto [nmin, nmax] = std::minmax_element(r.norms.begin(), r.norms.end());
  double const nmean = std::accumulate(r.norms.begin(), r.norms.end(), 0.0) / std::max<size_t>(1, r.norms.size());
  print("%s: proteus %s, format_version %lld\n", r.file.c_str(), r.kind.c_str(), r.version);
  print("DNA (%s): %d gates x %d\n", r.dna_group.c_str(), r.gates, r.embed);
  print("  prototype norms   min %.4g  mean %.4g  max %.4g\n", *nmin, nmean, *nmax);
  print("  most similar      gates %d and %d, cosine %.4f\n", r.most_similar[0], r.most_similar[1],
              r.most_similar_cos);
  print("  most distinct     gates %d and %d, cosine %.4f\n", r.most_distinct[0], r.most_distinct[1],
              r.most_distinct_cos);
  print("  mean |cosine|     %.4f over all pairs\n", r.mean_abs_cos);
  print("  usage histogram   (10 bins over [%.4g, %.4g]):", r.usage_min, r.usage_max);
  for (long c : r.usage_histogram) print(" %ld", c);
  print("\n");
  if (r.snapshots >= 0) print("  snapshots         %lld\n", r.snapshots);
  if (!r.gates_per_head.empty()) {
    print("gate -> head graph: %d heads; gates per head:", r.heads);
    for (int n : r.gates_per_head) print(" %d", n);
    print("\n  generalists (>= 2x the mean): %zu, specialists (one gate): %zu\n", r.generalists.size(),
                r.specialists.size());
  }
  if (r.tokens_caught >= 0) print("tokens caught by DNA: %lld of %lld\n", r.tokens_caught, r.tokens);
  if (r.chunks_processed >= 0) {
    print("chunks: %lld of %lld processed\n", r.chunks_processed, r.chunks_total);
    print("  candidates per chunk   min %.0f  mean %.1f  max %.0f\n", r.candidates_stats[0],
                r.candidates_stats[1], r.candidates_stats[2]);
    print("  caught per chunk       min %.0f  mean %.1f  max %.0f (most in chunk %lld)\n", r.caught_stats[0],
                r.caught_stats[1], r.caught_stats[2], r.busiest_chunk);
  }
  if (!r.top_buffer.empty()) {
    print("top buffer positions (score):");
    for (auto const& [p, s] : r.top_buffer) print(" %lld (%.3g)", p, s);
    print("\n");
  }
  return out;
}

std::string to_json(DnaReport const& r) {
  nlohmann::json j;
  j["file"] = r.file;
  j["kind"] = r.kind;
  j["format_version"] = r.version;
  j["dna_group"] = r.dna_group;
  j["gates"] = r.gates;
  j["embed_dim"] = r.embed;
  j["prototype_norms"] = r.norms;
  j["most_similar"] = {{"gates", {r.most_similar[0], r.most_similar[1]}}, {"cosine", r.most_similar_cos}};
  j["most_distinct"] = {{"gates", {r.most_distinct[0], r.most_distinct[1]}}, {"cosine", r.most_distinct_cos}};
  j["mean_abs_cosine"] = r.mean_abs_cos;
  j["usage"] = r.usage;
  j["usage_histogram"] = r.usage_histogram;
  j["gates_per_head"] = r.gates_per_head;
  j["generalist_heads"] = r.generalists;
  j["specialist_heads"] = r.specialists;
  j["tokens"] = r.tokens;
  j["tokens_caught"] = r.tokens_caught;
  j["snapshots"] = r.snapshots;
  j["chunks"] = {{"total", r.chunks_total},
                 {"processed", r.chunks_processed},
                 {"candidates_min_mean_max", std::vector<double>(r.candidates_stats, r.candidates_stats + 3)},
                 {"caught_min_mean_max", std::vector<double>(r.caught_stats, r.caught_stats + 3)},
                 {"busiest_chunk", r.busiest_chunk}};
  j["top_buffer"] = nlohmann::json::array();
  for (auto const& [position, score] : r.top_buffer) j["top_buffer"].push_back({{"position", position}, {"score", score}});
  // NaN (a damaged file) becomes null rather than invalid JSON.
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace proteus
