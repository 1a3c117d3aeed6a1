// A small kernel timer for the benchmarks: Kokkos Tools callbacks record the time of every
// labelled parallel region (the tools interface fences around them), summed per label.
// Vendor BLAS calls are not Kokkos regions; they show up as the remainder.
#pragma once

#include <Kokkos_Core.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace proteus::perf {

struct KernelTimes {
  static KernelTimes& get() {
    static KernelTimes t;
    return t;
  }
  std::map<std::string, double> seconds;
  std::map<std::uint64_t, std::pair<std::string, std::chrono::steady_clock::time_point>> open;
  std::uint64_t next = 1;
  bool on = false;
};

inline void kernel_begin(char const* name, std::uint32_t, std::uint64_t* id) {
  auto& t = KernelTimes::get();
  *id = t.next++;
  if (t.on) t.open[*id] = {name, std::chrono::steady_clock::now()};
}

inline void kernel_end(std::uint64_t id) {
  auto& t = KernelTimes::get();
  auto it = t.open.find(id);
  if (it == t.open.end()) return;
  Kokkos::fence();
  t.seconds[it->second.first] +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - it->second.second).count();
  t.open.erase(it);
}

inline void install_kernel_timer() {
  namespace kt = Kokkos::Tools::Experimental;
  kt::set_begin_parallel_for_callback(kernel_begin);
  kt::set_begin_parallel_reduce_callback(kernel_begin);
  kt::set_begin_parallel_scan_callback(kernel_begin);
  kt::set_end_parallel_for_callback(kernel_end);
  kt::set_end_parallel_reduce_callback(kernel_end);
  kt::set_end_parallel_scan_callback(kernel_end);
}

// The labels sorted by time, largest first.
inline std::vector<std::pair<double, std::string>> kernel_report() {
  std::vector<std::pair<double, std::string>> rows;
  for (auto const& [name, s] : KernelTimes::get().seconds) rows.emplace_back(s, name);
  std::sort(rows.rbegin(), rows.rend());
  return rows;
}

}  // namespace proteus::perf
