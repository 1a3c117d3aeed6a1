// The run summary as JSON (for scripts) and as text (for people).
#include <cstdio>
#include <sstream>

#include "proteus/pipeline.hpp"
#include "proteus/types.hpp"
#include "proteus/progress.hpp"
#include "proteus/version.hpp"

namespace proteus {

namespace {
template <class T>
std::string list(std::vector<T> const& v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}
}  // namespace

std::string RunSummary::to_json() const {
  std::ostringstream os;
  os.precision(10);
  os << "{\n"
     << "  \"proteus_version\": \"" << PROTEUS_VERSION_STRING << "\",\n"
     << "  \"commit\": \"" << PROTEUS_GIT_COMMIT << "\",\n"
     << "  \"tokens\": " << tokens << ",\n"
     << "  \"ranks\": " << ranks << ",\n"
     << "  \"chunks\": " << chunks << ",\n"
     << "  \"candidates\": " << candidates << ",\n"
     << "  \"buffer_tokens\": " << buffer_tokens << ",\n"
     << "  \"tokens_kept_in_chunks\": " << tokens_kept << ",\n"
     << "  \"dna_tokens_caught\": " << tokens_caught << ",\n"
     << "  \"needles\": " << needles << ",\n"
     << "  \"needles_found\": " << needles_found << ",\n"
     << "  \"buffer_mode\": \"" << buffer_mode << "\",\n"
     << "  \"buffer_output_norm\": " << buffer_output_norm << ",\n"
     << "  \"second_pass_tokens\": " << second_pass_tokens << ",\n"
     << "  \"second_pass_norm\": " << second_pass_norm << ",\n"
     << "  \"buffer_head\": " << list(buffer_head) << ",\n"
     << "  \"seconds\": {\"chunks\": " << seconds_chunks << ", \"dna\": " << seconds_dna
     << ", \"exchange\": " << seconds_exchange << ", \"buffer_pass\": " << seconds_buffer_pass << ", \"second_pass\": " << seconds_second_pass
     << ", \"checkpoint\": " << seconds_checkpoint << ", \"total\": " << seconds_total << "},\n"
     << "  \"tokens_per_second\": " << tokens_per_second << ",\n"
     << "  \"estimated_mb_per_rank\": " << estimated_mb_per_rank << ",\n"
     << "  \"peak_host_mb\": " << list(peak_host_mb) << ",\n"
     << "  \"peak_device_mb\": " << list(peak_device_mb) << ",\n"
     << "  \"resumed_from_chunk\": " << resumed_from_chunk << ",\n"
     << "  \"checkpoint\": \"" << checkpoint << "\"\n"
     << "}\n";
  return os.str();
}

std::string RunSummary::to_text() const {
  double peak = 0, device = 0;
  for (double p : peak_host_mb) peak = std::max(peak, p);
  for (double p : peak_device_mb) device = std::max(device, p);
  char pass[160] = "off";
  if (second_pass_tokens > 0)
    std::snprintf(pass, sizeof pass, "%ld tokens, output norm %.6g (%s)", second_pass_tokens, second_pass_norm,
                  format_duration(seconds_second_pass).c_str());
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
                "  throughput        %.4g tokens/s\n"
                "  peak memory       %.0f MiB host, %.0f MiB Kokkos %s allocations per rank (estimate %.0f MiB)\n"
                "  checkpoint        %s\n",
                tokens, ranks, chunks, tokens_caught, tokens_kept, candidates, buffer_tokens, needles_found,
                needles, buffer_mode.empty() ? "off" : buffer_mode.c_str(), buffer_output_norm, second_pass_text.c_str(),
                format_duration(seconds_chunks).c_str(), format_duration(seconds_dna).c_str(),
                format_duration(seconds_exchange).c_str(), format_duration(seconds_buffer_pass).c_str(),
                format_duration(seconds_checkpoint).c_str(), format_duration(seconds_total).c_str(),
                tokens_per_second, peak, device, MemSpace::name(), estimated_mb_per_rank, checkpoint.empty() ? "none" : checkpoint.c_str());
  return buf;
}

}  // namespace proteus
