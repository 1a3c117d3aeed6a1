// MPI exchange: candidates -> global top-S buffer -> buffer embeddings on every rank.
#include "proteus/buffer_exchange.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/sort_keys.hpp"
#include "proteus/error.hpp"

namespace proteus {

namespace {
std::vector<int> displacements(std::vector<int> const& counts) {
  std::vector<int> d(counts.size(), 0);
  for (size_t i = 1; i < counts.size(); ++i) d[i] = d[i - 1] + counts[i - 1];
  return d;
}

// Rank 0 receives every rank's share of `rows` rows of `width` values (share r: the rows
// buffer_rows_of_rank(rows, r, P)) into `all`, in row order; `mine` holds this rank's share.
// `all` needs room for rows * width values on rank 0 only.
template <class T>
void gather_shares_to_root(MPI_Comm comm, long rows, long width, T const* mine, T* all, MPI_Datatype type) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  std::vector<int> counts(ranks);
  for (int r = 0; r < ranks; ++r) {
    auto [a, b] = buffer_rows_of_rank(rows, r, ranks);
    counts[r] = static_cast<int>((b - a) * width);
  }
  std::vector<int> const displ = displacements(counts);
  MPI_Gatherv(mine, counts[rank], type, all, counts.data(), displ.data(), type, 0, comm);
}
}  // namespace

GlobalBuffer select_global_buffer(ExecSpace const& space, MPI_Comm comm, Candidates const& local,
                                  long buffer_tokens) {
  detail::ScopedRegion region("proteus::buffer_exchange::select");
  int ranks = 1;
  MPI_Comm_size(comm, &ranks);
  int const mine = static_cast<int>(local.size());
  std::vector<int> counts(ranks);
  MPI_Allgather(&mine, 1, MPI_INT, counts.data(), 1, MPI_INT, comm);
  std::vector<int> const displ = displacements(counts);
  long const total = std::accumulate(counts.begin(), counts.end(), 0L);
  std::vector<Position> pos(total);
  std::vector<float> score(total);
  static_assert(sizeof(Position) == sizeof(std::int64_t));
  MPI_Allgatherv(local.positions.data(), mine, MPI_INT64_T, pos.data(), counts.data(), displ.data(),
                 MPI_INT64_T, comm);
  MPI_Allgatherv(local.scores.data(), mine, MPI_FLOAT, score.data(), counts.data(), displ.data(), MPI_FLOAT, comm);

  // Top-S by (score desc, position asc): a radix sort of 64-bit keys on the device (the chunk
  // stage's, its kernels already loaded; a host sort of ctx10m's 450k candidates took ~30 ms).
  bool in_range = true;
  Kokkos::View<std::uint64_t*, HostSpace> keys("proteus::buffer::keys", total);
  for (long i = 0; i < total; ++i) {
    in_range = in_range && pos[i] >= 0 && pos[i] < (Position(1) << 32);
    keys(i) = detail::descending_score_key(score[i], static_cast<std::uint64_t>(pos[i]));
  }
  require(in_range, "buffer", "positions must be below 2^32");
  auto keys_device = Kokkos::create_mirror_view_and_copy(space, keys);
  Kokkos::View<unsigned char*, MemSpace> scratch;
  detail::sort(space, keys_device, scratch);
  long const take = std::min(buffer_tokens, total);
  // The chosen ones in position order (each position occurs once: chunks are disjoint), sorted on
  // the device too: keyed by (position, score bits).
  Kokkos::View<std::uint64_t*, MemSpace> by_position(
      Kokkos::view_alloc("proteus::buffer::by_position", Kokkos::WithoutInitializing), take);
  Kokkos::parallel_for(
      "proteus::buffer::by_position", RangePolicy(space, 0, take), KOKKOS_LAMBDA(long i) {
        std::uint64_t const key = keys_device(i);
        by_position(i) = (detail::key_position(key) << 32) | (key >> 32);
      });
  detail::sort(space, by_position, scratch);
  auto const chosen = Kokkos::subview(keys, std::make_pair(0L, take));
  Kokkos::deep_copy(space, chosen, by_position);
  space.fence();  // keys (host) is read next
  GlobalBuffer buffer;
  buffer.candidates = total;
  buffer.positions.resize(take);
  buffer.scores.resize(take);
  for (long i = 0; i < take; ++i) {
    buffer.positions[i] = static_cast<Position>(chosen(i) >> 32);
    buffer.scores[i] = detail::key_score(chosen(i) << 32);
  }
  return buffer;
}

TokenMatrix gather_buffer_embeddings(ExecSpace const& space, MPI_Comm comm, SequenceSource const& source,
                                     GlobalBuffer const& buffer, Position own_begin, Position own_end) {
  int ranks = 1;
  MPI_Comm_size(comm, &ranks);
  int const e = source.embed_dim();
  if (ranks == 1 || source.generated()) {
    // Every buffer row is at hand: one rank owns them all, or the source makes any row.
    TokenMatrix all(Kokkos::view_alloc("proteus::buffer::tokens", Kokkos::WithoutInitializing), buffer.size(), e);
    source.read_rows(space, buffer.positions, all);
    return all;
  }
  auto lo = std::lower_bound(buffer.positions.begin(), buffer.positions.end(), own_begin);
  auto hi = std::lower_bound(buffer.positions.begin(), buffer.positions.end(), own_end);
  std::vector<Position> const mine(lo, hi);
  TokenMatrix rows("proteus::buffer::own_rows", mine.size(), e);
  source.read_rows(space, mine, rows);
  auto host_rows = Kokkos::create_mirror_view_and_copy(HostSpace(), rows);
  int const count = static_cast<int>(mine.size()) * e;
  std::vector<int> counts(ranks);
  MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, comm);
  std::vector<int> const displ = displacements(counts);
  TokenMatrix all("proteus::buffer::tokens", buffer.size(), e);
  auto host_all = Kokkos::create_mirror_view(all);
  // Ranks own contiguous ranges in rank order, so the gathered rows are in position order.
  MPI_Allgatherv(host_rows.data(), count, MPI_FLOAT, host_all.data(), counts.data(), displ.data(), MPI_FLOAT, comm);
  Kokkos::deep_copy(space, all, host_all);
  return all;
}

std::pair<long, long> buffer_rows_of_rank(long rows, int rank, int ranks) {
  return {rows * rank / ranks, rows * (rank + 1) / ranks};
}

TokenMatrix gather_rows_to_root(ExecSpace const& space, MPI_Comm comm, TokenMatrix const& y) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  long const rows = static_cast<long>(y.extent(0));
  long const e = static_cast<long>(y.extent(1));
  if (ranks == 1) return y;  // rank 0 already holds every row
  auto [lo, hi] = buffer_rows_of_rank(rows, rank, ranks);
  // Only this rank's rows leave the device.
  auto host = Kokkos::create_mirror_view_and_copy(HostSpace(), Kokkos::subview(y, std::make_pair(lo, hi), Kokkos::ALL));
  TokenMatrix out("proteus::buffer::outputs", rank == 0 ? rows : 0, e);
  auto host_out = Kokkos::create_mirror_view(out);
  gather_shares_to_root(comm, rows, e, host.data(), host_out.data(), MPI_FLOAT);
  Kokkos::deep_copy(space, out, host_out);
  return out;
}

double buffer_output_norm(ExecSpace const& space, MPI_Comm comm, TokenMatrix const& y) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  long const rows = static_cast<long>(y.extent(0));
  long const e = static_cast<long>(y.extent(1));
  // Plain locals: a kernel lambda may not capture structured bindings in C++17 (clang, hipcc).
  auto const range = buffer_rows_of_rank(rows, rank, ranks);
  long const lo = range.first, hi = range.second;
  Kokkos::View<double*, MemSpace> row_sums(Kokkos::view_alloc("proteus::buffer::row_sums", Kokkos::WithoutInitializing),
                                           hi - lo);
  Kokkos::parallel_for(
      "proteus::buffer::row_sums", RangePolicy(space, 0, hi - lo), KOKKOS_LAMBDA(long i) {
        double s = 0.0;
        for (long j = 0; j < e; ++j) s += double(y(lo + i, j)) * y(lo + i, j);
        row_sums(i) = s;
      });
  auto host = Kokkos::create_mirror_view_and_copy(HostSpace(), row_sums);
  std::vector<double> all(rank == 0 ? rows : 0);
  gather_shares_to_root(comm, rows, 1, host.data(), all.data(), MPI_DOUBLE);
  double total = 0.0;
  for (double s : all) total += s;  // row order on rank 0: the same sum for every rank count
  return std::sqrt(total);
}

}  // namespace proteus
