// Peak memory of Kokkos allocations per memory space, through the Kokkos Tools allocation
// callbacks: portable (host, CUDA, HIP) and independent of any vendor API.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace proteus::detail {

// Starts counting (idempotent). Allocations made before the first call are not seen.
void track_memory();
// Peak and current bytes of the execution space's memory space (device on GPU builds).
double peak_memory_mb();
double current_memory_mb();
// Sets the peak to the current value (to measure one phase).
void reset_peak_memory();
// Allocations in that memory space so far (each is a device malloc and free on GPUs).
long long allocation_count();

// Diagnosis: from record_live_allocations() on, the allocations alive at the latest peak (since the
// last reset_peak_memory), largest first. Costs a map update per allocation; off by default.
struct Allocation {
  std::string label;
  long long bytes = 0;
};
void record_live_allocations();
std::vector<Allocation> allocations_at_peak();
// Diagnosis: allocations by label since the last reset_peak_memory (after record_live_allocations()).
std::vector<std::pair<std::string, long long>> allocations_made();

}  // namespace proteus::detail
