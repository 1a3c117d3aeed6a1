// Test runner: MPI and Kokkos are initialised once for every test case of the executable.
#define CATCH_CONFIG_RUNNER
#include <mpi.h>

#include <Kokkos_Core.hpp>

#include "proteus_catch.hpp"

#if PROTEUS_CATCH2_V3
#include <catch2/catch_session.hpp>
#endif

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int result = 0;
  {
    Kokkos::ScopeGuard kokkos(argc, argv);
    result = Catch::Session().run(argc, argv);
  }
  // Every rank must agree, otherwise ctest could see a pass from a rank whose peers failed.
  int worst = 0;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
