// Allocation accounting through Kokkos Tools callbacks.
#include "proteus/memory_tracker.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>

#include "proteus/types.hpp"

namespace proteus::detail {

namespace {
std::atomic<long long> current{0}, peak{0}, allocations{0};
bool tracking = false;

// Optional: the live allocations (by address) and a copy of them at the peak, for diagnosis.
struct LiveSet {
  std::mutex lock;
  std::atomic<bool> on{false};
  std::map<void const*, Allocation> live;
  std::vector<Allocation> at_peak;
  std::map<std::string, long long> made;  // allocations by label since the last reset
};
LiveSet& live_set() {
  static LiveSet set;
  return set;
}

// The live allocations become the peak's (the caller holds the lock).
void snapshot_peak(LiveSet& set) {
  set.at_peak.clear();
  for (auto const& [p, a] : set.live) set.at_peak.push_back(a);
}

// An allocation (allocate) or a deallocation. An empty view's allocation is counted too, as
// "label (empty)": on a GPU it still allocates a header and fences after copying it there.
void record(void const* ptr, char const* label, long long size, bool allocate, bool new_peak) {
  LiveSet& set = live_set();
  if (!set.on) return;  // the common case: no lock taken
  std::lock_guard<std::mutex> guard(set.lock);
  if (allocate) {
    if (size > 0) set.live[ptr] = {label, size};
    ++set.made[size > 0 ? std::string(label) : std::string(label) + " (empty)"];
  } else {
    set.live.erase(ptr);
  }
  if (new_peak) snapshot_peak(set);
}

bool ours(Kokkos::Tools::SpaceHandle const handle) { return std::strcmp(handle.name, MemSpace::name()) == 0; }

void on_allocate(Kokkos::Tools::SpaceHandle const handle, char const* label, void const* ptr, std::uint64_t size) {
  if (!ours(handle)) return;
  ++allocations;
  long long const now = current += static_cast<long long>(size);
  long long seen = peak.load();
  bool new_peak = false;
  while (now > seen && !(new_peak = peak.compare_exchange_weak(seen, now))) {
  }
  record(ptr, label, static_cast<long long>(size), true, new_peak);
}

void on_deallocate(Kokkos::Tools::SpaceHandle const handle, char const*, void const* ptr, std::uint64_t size) {
  if (!ours(handle)) return;
  current -= static_cast<long long>(size);
  record(ptr, "", 0, false, false);
}
}  // namespace

void track_memory() {
  if (tracking) return;
  tracking = true;
  Kokkos::Tools::Experimental::set_allocate_data_callback(on_allocate);
  Kokkos::Tools::Experimental::set_deallocate_data_callback(on_deallocate);
}

double peak_memory_mb() { return static_cast<double>(peak.load()) / (1 << 20); }
double current_memory_mb() { return static_cast<double>(current.load()) / (1 << 20); }
void reset_peak_memory() {
  peak = current.load();
  LiveSet& set = live_set();
  std::lock_guard<std::mutex> guard(set.lock);
  snapshot_peak(set);
  set.made.clear();
}

void record_live_allocations() {
  LiveSet& set = live_set();
  std::lock_guard<std::mutex> guard(set.lock);
  set.on = true;
}

std::vector<std::pair<std::string, long long>> allocations_made() {
  LiveSet& set = live_set();
  std::lock_guard<std::mutex> guard(set.lock);
  return {set.made.begin(), set.made.end()};
}

std::vector<Allocation> allocations_at_peak() {
  LiveSet& set = live_set();
  std::lock_guard<std::mutex> guard(set.lock);
  std::vector<Allocation> out = set.at_peak;
  std::sort(out.begin(), out.end(), [](Allocation const& a, Allocation const& b) { return a.bytes > b.bytes; });
  return out;
}
long long allocation_count() { return allocations.load(); }

}  // namespace proteus::detail
