// What a proteus HDF5 file holds, summarised for people and scripts (proteus_inspect, tests):
// a checkpoint's or a DNA dump's prototypes (norms, most similar and most distinct pairs), gate
// usage, the gate -> head graph, tokens caught, per-chunk statistics and the top buffer
// positions. Reads the file through detail::H5File, checking its schema and version.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace proteus {

struct DnaReport {
  std::string file, kind, dna_group;  // kind: checkpoint | model (weights file) | dna_dump
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
  std::vector<std::pair<long long, float>> top_buffer;  // (position, score), best first
  long long chunks_total = -1, chunks_processed = -1, busiest_chunk = -1;
  double candidates_stats[3] = {0, 0, 0}, caught_stats[3] = {0, 0, 0};  // min, mean, max per chunk
};

// Reads `path` (a checkpoint, a weights file or a DNA dump); `top` buffer positions are listed.
DnaReport inspect_file(std::string const& path, int top = 10);
std::string to_text(DnaReport const& report);
std::string to_json(DnaReport const& report);

}  // namespace proteus
