// Peak memory of Kokkos allocations per memory space, through the Kokkos Tools allocation
// callbacks: portable (host, CUDA, HIP) and independent of any vendor API.
#pragma once

#include <string>

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

}  // namespace proteus::detail
