// Second pass: per chunk, the rows [earlier buffer tokens | halo of `window` tokens | chunk] go
// through the module with a plan whose local piece is the window and whose global prefix is the
// earlier buffer; only the chunk's rows are queries.
#include "proteus/second_pass.hpp"

#include <algorithm>

#include "proteus/checkpoint.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/error.hpp"

namespace proteus {

namespace {

// The rows of one chunk's call and, for each, its position and global prefix.
struct ChunkRows {
  TokenMatrix x;                                   // [prefix + halo + len x E]
  PositionVector positions;                        // original positions of the rows
  Kokkos::View<long*, MemSpace> prefix_of_row;     // buffer rows before each row's window
  long prefix = 0, halo = 0, len = 0;
  long rows() const { return prefix + halo + len; }
};

// Rows: every buffer token before the end of chunk c, then the halo and the chunk. Row i's global
// prefix is the buffer tokens before its window, found by position.
ChunkRows chunk_rows(ExecSpace const& space, SequenceSource const& source, GlobalBuffer const& buffer,
                     TokenMatrix const& buffer_tokens, ChunkGrid const& grid, long window, long c) {
  ChunkRows r;
  Position const begin = grid.begin(c);
  r.len = grid.extent(c);
  Position const halo_begin = std::max<Position>(0, begin - window);
  r.halo = begin - halo_begin;
  auto const& bp = buffer.positions;
  r.prefix = std::lower_bound(bp.begin(), bp.end(), begin + r.len) - bp.begin();
  long const rows = r.rows(), e = static_cast<long>(buffer_tokens.extent(1));
  r.x = TokenMatrix(Kokkos::view_alloc("proteus::second_pass::x", Kokkos::WithoutInitializing), rows, e);
  Kokkos::deep_copy(space, Kokkos::subview(r.x, std::make_pair(0L, r.prefix), Kokkos::ALL),
                    Kokkos::subview(buffer_tokens, std::make_pair(0L, r.prefix), Kokkos::ALL));
  source.read(space, halo_begin, Kokkos::subview(r.x, std::make_pair(r.prefix, rows), Kokkos::ALL));
  r.positions = PositionVector("proteus::second_pass::positions", rows);
  r.prefix_of_row = Kokkos::View<long*, MemSpace>("proteus::second_pass::prefix_of_row", rows);
  auto hp = Kokkos::create_mirror_view(r.positions);
  auto hr = Kokkos::create_mirror_view(r.prefix_of_row);
  for (long i = 0; i < r.prefix; ++i) hp(i) = bp[i];
  for (long i = r.prefix; i < rows; ++i) {
    hp(i) = halo_begin + (i - r.prefix);
    hr(i) = std::lower_bound(bp.begin(), bp.begin() + r.prefix, hp(i) - window) - bp.begin();
  }
  Kokkos::deep_copy(space, r.positions, hp);
  Kokkos::deep_copy(space, r.prefix_of_row, hr);
  space.fence();  // the host mirrors are freed on return
  return r;
}

// Local piece = the window (and the row itself) above the global rows; global prefix per row.
ShortlistPlan window_plan(ChunkRows const& r, long window) {
  ShortlistPlan plan;
  plan.alpha = 1.0;
  plan.local_width = window + 1;
  plan.window = window + 1;
  plan.prefix = r.prefix;
  plan.prefix_of_row = r.prefix_of_row;
  plan.local_floor = r.prefix;
  plan.budget = r.prefix + window + 1;
  return plan;
}

template <class Rows>
double sum_of_squares(ExecSpace const& space, Rows const& y) {
  long const e = static_cast<long>(y.extent(1));
  double squares = 0.0;
  Kokkos::parallel_reduce(
      "proteus::second_pass::norm", RangePolicy(space, 0, y.extent(0) * e),
      KOKKOS_LAMBDA(long i, double& s) {
        float const v = y(i / e, i % e);
        s += double(v) * v;
      },
      squares);
  return squares;
}

}  // namespace

SecondPassResult run_second_pass(ExecSpace const& space, CausalGeneticMultiheadAttention& model,
                                 SequenceSource const& source, GlobalBuffer const& buffer,
                                 TokenMatrix const& buffer_tokens, ChunkGrid const& grid, long window,
                                 ChunkRange range, std::string const& outputs_path) {
  detail::ScopedRegion region("proteus::second_pass");
  require(!model.config().token_sparse, "second pass", "needs token sparsity off");
  int const e = model.config().embed_dim;
  SecondPassResult result;
  std::vector<float> outputs;
  std::vector<Position> out_positions;
  bool const keep = !outputs_path.empty();
  for (long c = range.first; c < range.last; ++c) {
    ChunkRows const r = chunk_rows(space, source, buffer, buffer_tokens, grid, window, c);
    RunOptions opt;
    opt.row_begin = r.prefix + r.halo;
    opt.row_end = r.rows();
    opt.update_dna = false;
    opt.plan = window_plan(r, window);
    TokenMatrix y(Kokkos::view_alloc("proteus::second_pass::y", Kokkos::WithoutInitializing), r.rows(), e);
    model.run(space, r.x, 1, r.positions, y, opt);
    auto mine = Kokkos::subview(y, std::make_pair(opt.row_begin, r.rows()), Kokkos::ALL);
    result.sum_of_squares += sum_of_squares(space, mine);
    result.tokens += r.len;
    if (!keep) continue;
    auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), mine);
    outputs.insert(outputs.end(), h.data(), h.data() + h.size());
    for (long i = 0; i < r.len; ++i) out_positions.push_back(grid.begin(c) + i);
  }
  if (keep)
    write_outputs(outputs_path, out_positions, outputs, e,
                  "second pass output of every token of this rank (window + earlier buffer)");
  return result;
}

}  // namespace proteus
