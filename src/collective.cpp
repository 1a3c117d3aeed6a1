// Agreement on failures across ranks.
#include "proteus/detail/collective.hpp"

#include <string>
#include <vector>

#include "proteus/error.hpp"

namespace proteus::detail {

void run_agreed(MPI_Comm comm, std::function<void()> const& f) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  std::string message;
  bool failed = false;
  try {
    f();
  } catch (std::exception const& e) {
    failed = true;
    message = e.what();
  }
  int who = failed ? rank : ranks;
  MPI_Allreduce(MPI_IN_PLACE, &who, 1, MPI_INT, MPI_MIN, comm);
  if (who == ranks) return;
  int length = static_cast<int>(message.size());
  MPI_Bcast(&length, 1, MPI_INT, who, comm);
  message.resize(length);
  MPI_Bcast(message.data(), length, MPI_CHAR, who, comm);
  if (who != 0 && !message.empty()) message = "rank " + std::to_string(who) + ": " + message;
  throw CollectiveError(rank == 0 ? message : "");
}

}  // namespace proteus::detail
