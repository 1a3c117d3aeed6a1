// A small kernel timer for the benchmarks: Kokkos Tools callbacks record the time of every
// labelled parallel region (the tools interface fences around them), summed per label.
// Vendor BLAS calls are not Kokkos regions; they show up as the remainder.
#pragma once

#include <Kokkos_Core.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
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
  bool own_fence = false;  // the timer's own fences are not counted
  long kernels = 0, fences = 0, copies = 0;  // events while on
  std::map<std::string, long> fence_names;
  std::map<std::string, long> copy_names;  // "destination <- source" by the views' labels
};

// A fence of the benchmark itself, not counted among the module's.
inline void untimed_fence() {
  auto& t = KernelTimes::get();
  t.own_fence = true;
  Kokkos::fence();
  t.own_fence = false;
}

inline void kernel_begin(char const* name, std::uint32_t, std::uint64_t* id) {
  auto& t = KernelTimes::get();
  *id = t.next++;
  if (!t.on) return;
  ++t.kernels;
  t.open[*id] = {name, std::chrono::steady_clock::now()};
}

// Fences of the code measured: not the timer's own, nor those Kokkos adds around every kernel
// while a tool listens to kernels (named "... Kokkos Profile Tool Fence").
inline void fence_begin(char const* name, std::uint32_t, std::uint64_t* id) {
  auto& t = KernelTimes::get();
  *id = t.next++;
  if (!t.on || t.own_fence || std::strstr(name, "Profile Tool Fence") != nullptr) return;
  ++t.fences;
  ++t.fence_names[name];
}

inline void fence_end(std::uint64_t) {}

inline void copy_begin(Kokkos::Tools::SpaceHandle, char const* destination, void const*, Kokkos::Tools::SpaceHandle,
                       char const* source, void const*, std::uint64_t) {
  auto& t = KernelTimes::get();
  if (!t.on) return;
  ++t.copies;
  ++t.copy_names[std::string(destination) + " <- " + source];
}

inline void kernel_end(std::uint64_t id) {
  auto& t = KernelTimes::get();
  auto it = t.open.find(id);
  if (it == t.open.end()) return;
  untimed_fence();
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
  kt::set_begin_fence_callback(fence_begin);
  kt::set_end_fence_callback(fence_end);
  kt::set_begin_deep_copy_callback(copy_begin);
}

// The labels sorted by time, largest first.
inline std::vector<std::pair<double, std::string>> kernel_report() {
  std::vector<std::pair<double, std::string>> rows;
  for (auto const& [name, s] : KernelTimes::get().seconds) rows.emplace_back(s, name);
  std::sort(rows.rbegin(), rows.rend());
  return rows;
}

}  // namespace proteus::perf
