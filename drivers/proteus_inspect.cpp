// proteus_inspect: reads a proteus HDF5 file (checkpoint or DNA dump), checks its schema and
// version, and reports what the DNA learned: prototype norms and similarities, the gate->head
// graph, gate usage, tokens caught and the top buffer positions. --json for scripts.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "proteus/checkpoint.hpp"
#include "proteus/detail/hdf5_io.hpp"
#include "proteus/error.hpp"

using proteus::detail::H5File;

namespace {

struct Report {
  std::string file, kind, dna_group;
  long long version = 0;
  int gates = 0, embed = 0, heads = 0;
  std::vector<double> norms, usage, confidence;
  int most_similar[2] = {0, 0}, most_distinct[2] = {0, 0};
  double most_similar_cos = -2, most_distinct_cos = 2, mean_abs_cos = 0;
  std::vector<int> gates_per_head;
  std::vector<int> generalists, specialists;
  std::vector<long> usage_histogram;  // 10 bins over [min, max] usage
  double usage_min = 0, usage_max = 0;
  long long tokens_caught = -1, tokens = -1, snapshots = -1;
  std::vector<std::pair<long long, float>> top_buffer;  // (position, score)
  long long chunks_total = -1, chunks_processed = -1, busiest_chunk = -1;
  double candidates_stats[3] = {0, 0, 0}, caught_stats[3] = {0, 0, 0};  // min, mean, max per chunk
};

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

Report inspect(std::string const& path, int top) {
  H5File f(path, "r");
  Report r;
  r.file = path;
  r.version = f.attr_int("/", "format_version");
  if (r.version != proteus::checkpoint_format_version)
    proteus::fail(path, "format_version " + std::to_string(r.version) + " is not the supported " +
                            std::to_string(proteus::checkpoint_format_version));
  std::vector<float> protos;
  std::vector<hsize_t> dims;
  if (f.exists("/dna")) {
    r.kind = "checkpoint";
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
    proteus::fail(path, "neither a checkpoint (/dna) nor a DNA dump (/prototypes)");
  }
  r.gates = static_cast<int>(dims[0]);
  r.embed = static_cast<int>(dims[1]);
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
  if (r.kind == "checkpoint") {
    std::vector<std::int32_t> map;
    f.read("/gate_to_head", {static_cast<hsize_t>(g)}, map);
    r.heads = static_cast<int>(f.attr_int("/config", "num_heads"));
    r.gates_per_head.assign(r.heads, 0);
    for (int h : map) {
      if (h < 0 || h >= r.heads)
        proteus::fail(f.where("/gate_to_head"), "entry " + std::to_string(h) + " is not a head");
      ++r.gates_per_head[h];
    }
    double const mean = double(g) / r.heads;
    for (int h = 0; h < r.heads; ++h) {
      if (r.gates_per_head[h] >= 2 * mean && r.gates_per_head[h] > 1) r.generalists.push_back(h);
      if (r.gates_per_head[h] == 1) r.specialists.push_back(h);
    }
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
    if (f.exists("/buffer")) {
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
  }
  return r;
}

template <class T>
std::string json_list(std::vector<T> const& v) {
  std::ostringstream os;
  os.precision(8);
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  return os.str() + "]";
}

void print_json(Report const& r) {
  std::ostringstream os;
  os.precision(8);
  os << "{\n  \"file\": \"" << r.file << "\",\n  \"kind\": \"" << r.kind << "\",\n  \"format_version\": " << r.version
     << ",\n  \"dna_group\": \"" << r.dna_group << "\",\n  \"gates\": " << r.gates << ",\n  \"embed_dim\": " << r.embed
     << ",\n  \"prototype_norms\": " << json_list(r.norms) << ",\n  \"most_similar\": {\"gates\": ["
     << r.most_similar[0] << ", " << r.most_similar[1] << "], \"cosine\": " << r.most_similar_cos
     << "},\n  \"most_distinct\": {\"gates\": [" << r.most_distinct[0] << ", " << r.most_distinct[1]
     << "], \"cosine\": " << r.most_distinct_cos << "},\n  \"mean_abs_cosine\": " << r.mean_abs_cos
     << ",\n  \"usage\": " << json_list(r.usage) << ",\n  \"usage_histogram\": " << json_list(r.usage_histogram)
     << ",\n  \"gates_per_head\": " << json_list(r.gates_per_head)
     << ",\n  \"generalist_heads\": " << json_list(r.generalists)
     << ",\n  \"specialist_heads\": " << json_list(r.specialists) << ",\n  \"tokens\": " << r.tokens
     << ",\n  \"tokens_caught\": " << r.tokens_caught << ",\n  \"snapshots\": " << r.snapshots
     << ",\n  \"chunks\": {\"total\": " << r.chunks_total << ", \"processed\": " << r.chunks_processed
     << ", \"candidates_min_mean_max\": " << json_list(std::vector<double>(r.candidates_stats, r.candidates_stats + 3))
     << ", \"caught_min_mean_max\": " << json_list(std::vector<double>(r.caught_stats, r.caught_stats + 3))
     << ", \"busiest_chunk\": " << r.busiest_chunk << "},\n  \"top_buffer\": [";
  for (size_t i = 0; i < r.top_buffer.size(); ++i)
    os << (i ? ", " : "") << "{\"position\": " << r.top_buffer[i].first << ", \"score\": " << r.top_buffer[i].second
       << "}";
  os << "]\n}\n";
  std::fputs(os.str().c_str(), stdout);
}

void print_text(Report const& r) {
  auto [nmin, nmax] = std::minmax_element(r.norms.begin(), r.norms.end());
  double const nmean = std::accumulate(r.norms.begin(), r.norms.end(), 0.0) / std::max<size_t>(1, r.norms.size());
  std::printf("%s: proteus %s, format_version %lld\n", r.file.c_str(), r.kind.c_str(), r.version);
  std::printf("DNA (%s): %d gates x %d\n", r.dna_group.c_str(), r.gates, r.embed);
  std::printf("  prototype norms   min %.4g  mean %.4g  max %.4g\n", *nmin, nmean, *nmax);
  std::printf("  most similar      gates %d and %d, cosine %.4f\n", r.most_similar[0], r.most_similar[1],
              r.most_similar_cos);
  std::printf("  most distinct     gates %d and %d, cosine %.4f\n", r.most_distinct[0], r.most_distinct[1],
              r.most_distinct_cos);
  std::printf("  mean |cosine|     %.4f over all pairs\n", r.mean_abs_cos);
  std::printf("  usage histogram   (10 bins over [%.4g, %.4g]):", r.usage_min, r.usage_max);
  for (long c : r.usage_histogram) std::printf(" %ld", c);
  std::printf("\n");
  if (r.snapshots >= 0) std::printf("  snapshots         %lld\n", r.snapshots);
  if (!r.gates_per_head.empty()) {
    std::printf("gate -> head graph: %d heads; gates per head:", r.heads);
    for (int n : r.gates_per_head) std::printf(" %d", n);
    std::printf("\n  generalists (>= 2x the mean): %zu, specialists (one gate): %zu\n", r.generalists.size(),
                r.specialists.size());
  }
  if (r.tokens_caught >= 0) std::printf("tokens caught by DNA: %lld of %lld\n", r.tokens_caught, r.tokens);
  if (r.chunks_processed >= 0) {
    std::printf("chunks: %lld of %lld processed\n", r.chunks_processed, r.chunks_total);
    std::printf("  candidates per chunk   min %.0f  mean %.1f  max %.0f\n", r.candidates_stats[0],
                r.candidates_stats[1], r.candidates_stats[2]);
    std::printf("  caught per chunk       min %.0f  mean %.1f  max %.0f (most in chunk %lld)\n", r.caught_stats[0],
                r.caught_stats[1], r.caught_stats[2], r.busiest_chunk);
  }
  if (!r.top_buffer.empty()) {
    std::printf("top buffer positions (score):");
    for (auto const& [p, s] : r.top_buffer) std::printf(" %lld (%.3g)", p, s);
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"proteus_inspect: summarise a proteus checkpoint or DNA dump (HDF5)"};
  std::string file;
  bool json = false;
  int top = 10;
  app.add_option("file", file, "checkpoint_*.h5 or dna_dump.h5")->required()->check(CLI::ExistingFile);
  app.add_flag("--json", json, "machine-readable output");
  app.add_option("--top", top, "buffer positions to list");
  CLI11_PARSE(app, argc, argv);
  try {
    Report const r = inspect(file, top);
    json ? print_json(r) : print_text(r);
  } catch (proteus::Error const& e) {
    std::fprintf(stderr, "proteus_inspect: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
