// Scratch directories for tests that run under MPI: one per test and rank count, shared by all
// ranks of the run.
#pragma once

#include <mpi.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace proteus::test {

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

inline int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

inline std::string scratch(std::string const& name) {
  long id = world_rank() == 0 ? static_cast<long>(getpid()) : 0;
  MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  auto const dir = std::filesystem::temp_directory_path() /
                   ("proteus_" + name + "_np" + std::to_string(world_size()) + "_" + std::to_string(id));
  if (world_rank() == 0) std::filesystem::create_directories(dir);
  MPI_Barrier(MPI_COMM_WORLD);
  return dir.string();
}

}  // namespace proteus::test
