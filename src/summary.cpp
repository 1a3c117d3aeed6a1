// The run summary as JSON (for scripts) and as text (for people).
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <sstream>

#include "proteus/pipeline.hpp"
#include "proteus/types.hpp"
#include "proteus/progress.hpp"
#include "proteus/version.hpp"

namespace proteus {

namespace {
// JSON has no NaN or Inf: a non-finite figure is written as null (and a reader sees that it is).
nlohmann::json number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
nlohmann::json numbers(std::vector<double> const& v) {
  nlohmann::json out = nlohmann::json::array();
  for (double x : v) out.push_back(number(x));
  return out;
}
}  // namespace

std::string RunSummary::to_json() const {
  nlohmann::json j;
  j["proteus_version"] = PROTEUS_VERSION_STRING;
  j["commit"] = PROTEUS_GIT_COMMIT;
  j["tokens"] = tokens;
  j["ranks"] = ranks;
  j["chunks"] = chunks;
  j["candidates"] = candidates;
  j["buffer_tokens"] = buffer_tokens;
  j["tokens_kept_in_chunks"] = tokens_kept;
  j["dna_tokens_caught"] = tokens_caught;
  j["needles"] = needles;
  j["needles_found"] = needles_found;
  j["buffer_mode"] = buffer_mode;
  j["buffer_output_norm"] = number(buffer_output_norm);
  j["second_pass_tokens"] = second_pass_tokens;
  j["second_pass_norm"] = number(second_pass_norm);
  j["buffer_head"] = buffer_head;
  j["seconds"] = {{"chunks", seconds_chunks},           {"dna", seconds_dna},
                  {"exchange", seconds_exchange},       {"buffer_pass", seconds_buffer_pass},
                  {"second_pass", seconds_second_pass}, {"checkpoint", seconds_checkpoint},
                  {"total", seconds_total},             {"chunks_launch", seconds_chunk_launch},
                  {"chunks_wait", seconds_chunk_wait},   {"chunks_host", seconds_chunk_host},
                  {"chunks_first", seconds_chunk_first}};
  j["tokens_per_second"] = number(tokens_per_second);
  j["estimated_mb_per_rank"] = number(estimated_mb_per_rank);
  j["peak_host_mb"] = numbers(peak_host_mb);
  j["peak_device_mb"] = numbers(peak_device_mb);
  j["resumed_from_chunk"] = resumed_from_chunk;
  j["checkpoint"] = checkpoint;
  return j.dump(2) + "\n";
}

std::string RunSummary::to_text() const {
  double peak = 0, device = 0;
  for (double p : peak_host_mb) peak = std::max(peak, p);
  for (double p : peak_device_mb) device = std::max(device, p);
  char pass[160] = "off";
  if (second_pass_tokens > 0)
    std::snprintf(pass, sizeof pass, "%ld tokens, output norm %.6g (%s)", second_pass_tokens, second_pass_norm,
                  detail::format_duration(seconds_second_pass).c_str());
  std::string const second_pass_text = pass;
  char buf[2048];
  std::snprintf(buf, sizeof buf,
                "proteus run summary\n"
                "  tokens            %ld over %d rank(s), %ld chunks\n"
                "  DNA caught        %ld tokens (beta > 0); chunk sparsity kept %ld\n"
                "  candidates        %ld -> global buffer of %ld tokens\n"
                "  needles found     %ld of %ld\n"
                "  buffer pass       %s, output norm %.6g\n"
                "  second pass       %s\n"
                "  time              chunks %s, dna %s, exchange %s, buffer pass %s, checkpoint %s, total %s\n"
                "  chunk stage       launch %s, device wait %s, host %s; first chunk %s (rank 0)\n"
                "  throughput        %.4g tokens/s\n"
                "  peak memory       %.0f MiB host, %.0f MiB Kokkos %s allocations per rank (estimate %.0f MiB)\n"
                "  checkpoint        %s\n",
                tokens, ranks, chunks, tokens_caught, tokens_kept, candidates, buffer_tokens, needles_found,
                needles, buffer_mode.empty() ? "off" : buffer_mode.c_str(), buffer_output_norm, second_pass_text.c_str(),
                detail::format_duration(seconds_chunks).c_str(), detail::format_duration(seconds_dna).c_str(),
                detail::format_duration(seconds_exchange).c_str(), detail::format_duration(seconds_buffer_pass).c_str(),
                detail::format_duration(seconds_checkpoint).c_str(), detail::format_duration(seconds_total).c_str(),
                detail::format_duration(seconds_chunk_launch).c_str(), detail::format_duration(seconds_chunk_wait).c_str(),
                detail::format_duration(seconds_chunk_host).c_str(), detail::format_duration(seconds_chunk_first).c_str(),
                tokens_per_second, peak, device, MemSpace::name(),
                estimated_mb_per_rank, checkpoint.empty() ? "none" : checkpoint.c_str());
  return buf;
}

}  // namespace proteus
