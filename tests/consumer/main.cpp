// Runs the drop-in module once and checks the output is finite and shaped like the input.
#include <mpi.h>

#include <cmath>
#include <cstdio>

#include <proteus/multihead_attention.hpp>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int bad = 0;
  {
    Kokkos::ScopeGuard guard(argc, argv);
    proteus::ExecSpace const space;
    proteus::CausalGeneticMultiheadAttention mha(space, 32, 4, true);
    proteus::BatchTensor x("x", 2, 50, 32);
    Kokkos::deep_copy(space, x, 0.5f);
    auto [y, stats] = mha.forward(space, x, {}, {}, {}, true);
    auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), y);
    for (size_t i = 0; i < h.size(); ++i) bad += std::isfinite(h.data()[i]) ? 0 : 1;
    bad += (y.extent(0) == 2 && y.extent(1) == 50 && y.extent(2) == 32 && stats) ? 0 : 1;
    std::printf("consumer: output [%zu, %zu, %zu], mode %s, %d problems\n", y.extent(0), y.extent(1), y.extent(2),
                stats ? stats->mode.c_str() : "?", bad);
  }
  MPI_Finalize();
  return bad == 0 ? 0 : 1;
}
