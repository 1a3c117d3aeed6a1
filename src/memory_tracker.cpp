// Allocation accounting through Kokkos Tools callbacks.
#include "proteus/memory_tracker.hpp"

#include <Kokkos_Core.hpp>

#include <atomic>
#include <cstring>

#include "proteus/types.hpp"

namespace proteus::detail {

namespace {
std::atomic<long long> current{0}, peak{0}, allocations{0};
bool tracking = false;

bool ours(Kokkos::Tools::SpaceHandle const handle) { return std::strcmp(handle.name, MemSpace::name()) == 0; }

void on_allocate(Kokkos::Tools::SpaceHandle const handle, char const*, void const*, std::uint64_t size) {
  if (!ours(handle)) return;
  ++allocations;
  long long const now = current += static_cast<long long>(size);
  long long seen = peak.load();
  while (now > seen && !peak.compare_exchange_weak(seen, now)) {
  }
}

void on_deallocate(Kokkos::Tools::SpaceHandle const handle, char const*, void const*, std::uint64_t size) {
  if (ours(handle)) current -= static_cast<long long>(size);
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
void reset_peak_memory() { peak = current.load(); }
long long allocation_count() { return allocations.load(); }

}  // namespace proteus::detail
