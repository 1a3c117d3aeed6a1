// Turning a rank-local failure into a decision every rank shares, so that bad input ends all
// ranks cleanly with one message on rank 0 instead of a hang or an abort.
#pragma once

#include <mpi.h>

#include <exception>
#include <functional>

namespace proteus::detail {

// Runs f on every rank; if it throws on any rank, every rank throws CollectiveError, rank 0's
// carrying the message of the lowest failing rank.
void run_agreed(MPI_Comm comm, std::function<void()> const& f);

}  // namespace proteus::detail
