// The MPI exchange of the pipeline (buffer_exchange.hpp), run with 1, 2 and 4 ranks: the global
// top-S choice against a sort of every candidate on one host, the split of the buffer's rows over
// ranks, and the output norm and gathered outputs, which must not depend on the rank count.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "proteus/buffer_exchange.hpp"
#include "scratch.hpp"
#include "test_space.hpp"

using namespace proteus;
using test::world_rank;
using test::world_size;

namespace {

// Candidate k of the whole sequence: position 3k + 1, a score with many ties (11 values).
Position position_of(long k) { return 3 * k + 1; }
float score_of(long k) { return static_cast<float>((k * 7919) % 11) * 0.125f - 0.5f; }

// This rank's share of `total` candidates, as the chunk stage would leave it (contiguous).
Candidates local_share(long total) {
  Candidates c;
  for (long k = total * world_rank() / world_size(); k < total * (world_rank() + 1) / world_size(); ++k) {
    c.positions.push_back(position_of(k));
    c.scores.push_back(score_of(k));
  }
  return c;
}

// Value (i, j) of a buffer pass output with S rows: any formula known to every rank.
float output_of(long i, long j) { return static_cast<float>(std::sin(0.37 * i + 0.11 * j)); }

}  // namespace

PROTEUS_TEST_CASE("the global buffer is the top S by (score desc, position asc) of every rank's candidates",
                  "[buffer_exchange][mpi]") {
  TEST_EXECSPACE space;
  for (long total : {0L, 5L, 1000L}) {
    for (long s : {1L, 64L, 2000L}) {
      GlobalBuffer const b = select_global_buffer(space, MPI_COMM_WORLD, local_share(total), s);
      // Reference: every candidate on one host, one sort.
      std::vector<std::tuple<float, Position>> all;
      for (long k = 0; k < total; ++k) all.emplace_back(-score_of(k), position_of(k));
      std::sort(all.begin(), all.end());
      all.resize(std::min<long>(s, total));
      std::vector<std::pair<Position, float>> want;
      for (auto const& [neg, p] : all) want.emplace_back(p, -neg);
      std::sort(want.begin(), want.end());
      INFO("candidates " << total << ", S " << s << ", ranks " << world_size());
      REQUIRE(b.size() == want.size());
      CHECK(b.candidates == total);
      for (size_t i = 0; i < want.size(); ++i) {
        CHECK(b.positions[i] == want[i].first);
        CHECK(b.scores[i] == want[i].second);
      }
    }
  }
}

PROTEUS_TEST_CASE("buffer rows split over ranks in order; norm and gathered outputs do not depend on the rank count",
                  "[buffer_exchange][mpi]") {
  TEST_EXECSPACE space;
  int const ranks = world_size(), rank = world_rank();
  for (long rows : {0L, 3L, 1001L}) {
    long next = 0;
    for (int r = 0; r < ranks; ++r) {
      auto const [lo, hi] = buffer_rows_of_rank(rows, r, ranks);
      CHECK(lo == next);
      CHECK(hi >= lo);
      next = hi;
    }
    CHECK(next == rows);
    // This rank computed its rows of y; the others are left zero, as in the buffer pass.
    long const e = 5;
    TokenMatrix y("y", rows, e);
    auto h = Kokkos::create_mirror_view(y);
    auto const [lo, hi] = buffer_rows_of_rank(rows, rank, ranks);
    double squares = 0.0;
    for (long i = 0; i < rows; ++i)
      for (long j = 0; j < e; ++j) {
        squares += double(output_of(i, j)) * output_of(i, j);
        h(i, j) = i >= lo && i < hi ? output_of(i, j) : 0.0f;
      }
    Kokkos::deep_copy(y, h);
    double const norm = buffer_output_norm(space, MPI_COMM_WORLD, y);
    TokenMatrix const all = gather_rows_to_root(space, MPI_COMM_WORLD, y);
    if (rank != 0) continue;
    // Rows summed in row order in double on rank 0: within a few double roundoffs of the host sum.
    CHECK(std::fabs(norm - std::sqrt(squares)) <= 1e-12 * std::max(1.0, std::sqrt(squares)));
    REQUIRE(static_cast<long>(all.extent(0)) == rows);
    auto ha = Kokkos::create_mirror_view_and_copy(HostSpace(), all);
    long wrong = 0;
    for (long i = 0; i < rows; ++i)
      for (long j = 0; j < e; ++j) wrong += ha(i, j) == output_of(i, j) ? 0 : 1;
    CHECK(wrong == 0);
  }
}
