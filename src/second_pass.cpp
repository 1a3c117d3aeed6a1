// Second pass: per chunk, the rows [earlier buffer tokens | halo of `window` tokens | chunk] go
// through the module with a plan whose local piece is the window and whose global prefix is the
// earlier buffer; only the chunk's rows are queries.
#include "proteus/second_pass.hpp"

#include <algorithm>
#include <filesystem>

#include "proteus/detail/hdf5_io.hpp"
#include "proteus/error.hpp"

namespace proteus {

SecondPassResult run_second_pass(ExecSpace const& space, CausalGeneticMultiheadAttention& model,
                                 SequenceSource const& source, GlobalBuffer const& buffer,
                                 TokenMatrix const& buffer_tokens, PipelineSpec const& spec, ChunkRange range,
                                 std::string const& outputs_path) {
  require(!model.config().token_sparse, "second pass", "needs token sparsity off");
  int const e = model.config().embed_dim;
  long const w = spec.second_pass_window;
  long const tokens = source.tokens();
  SecondPassResult result;
  std::vector<float> outputs;
  std::vector<std::int64_t> out_positions;
  bool const keep = !outputs_path.empty();
  for (long c = range.first; c < range.last; ++c) {
    Position const begin = c * spec.chunk_tokens;
    long const len = std::min(spec.chunk_tokens, tokens - begin);
    Position const halo_begin = std::max<Position>(0, begin - w);
    long const halo = begin - halo_begin;
    // Rows: every buffer token before the end of the chunk, then the halo and the chunk. Row i's
    // global prefix is the buffer tokens before its window, found by position.
    long const prefix =
        std::lower_bound(buffer.positions.begin(), buffer.positions.end(), begin + len) - buffer.positions.begin();
    long const rows = prefix + halo + len;
    TokenMatrix x(Kokkos::view_alloc("proteus::second_pass::x", Kokkos::WithoutInitializing), rows, e);
    Kokkos::deep_copy(space, Kokkos::subview(x, std::make_pair(0L, prefix), Kokkos::ALL),
                      Kokkos::subview(buffer_tokens, std::make_pair(0L, prefix), Kokkos::ALL));
    source.read(space, halo_begin, Kokkos::subview(x, std::make_pair(prefix, rows), Kokkos::ALL));
    PositionVector pos("proteus::second_pass::positions", rows);
    Kokkos::View<long*, MemSpace> prefix_of_row("proteus::second_pass::prefix_of_row", rows);
    auto hp = Kokkos::create_mirror_view(pos);
    auto hr = Kokkos::create_mirror_view(prefix_of_row);
    for (long i = 0; i < prefix; ++i) hp(i) = buffer.positions[i];
    for (long i = prefix; i < rows; ++i) {
      hp(i) = halo_begin + (i - prefix);
      hr(i) = std::lower_bound(buffer.positions.begin(), buffer.positions.begin() + prefix, hp(i) - w) -
              buffer.positions.begin();
    }
    Kokkos::deep_copy(space, pos, hp);
    Kokkos::deep_copy(space, prefix_of_row, hr);

    ShortlistPlan plan;
    plan.alpha = 1.0;
    plan.local_width = w + 1;
    plan.window = w + 1;
    plan.prefix = prefix;
    plan.prefix_of_row = prefix_of_row;
    plan.local_floor = prefix;
    plan.budget = prefix + w + 1;
    RunOptions opt;
    opt.row_begin = prefix + halo;
    opt.row_end = rows;
    opt.update_dna = false;
    opt.plan = plan;
    TokenMatrix y(Kokkos::view_alloc("proteus::second_pass::y", Kokkos::WithoutInitializing), rows, e);
    model.run(space, x, 1, pos, y, opt);
    auto mine = Kokkos::subview(y, std::make_pair(prefix + halo, rows), Kokkos::ALL);
    double squares = 0.0;
    Kokkos::parallel_reduce(
        "proteus::second_pass::norm", Kokkos::RangePolicy<ExecSpace>(space, 0, len * e),
        KOKKOS_LAMBDA(long i, double& s) {
          float const v = mine(i / e, i % e);
          s += double(v) * v;
        },
        squares);
    result.sum_of_squares += squares;
    result.tokens += len;
    if (keep) {
      auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), mine);
      outputs.insert(outputs.end(), h.data(), h.data() + h.size());
      for (long i = 0; i < len; ++i) out_positions.push_back(begin + i);
    }
  }
  if (keep) {
    std::string const tmp = outputs_path + ".tmp";
    {
      detail::H5File f(tmp, "w");
      f.attr("/", "format_version", 1LL);
      f.write("/positions", {out_positions.size()}, out_positions.data());
      f.write("/outputs", {out_positions.size(), static_cast<hsize_t>(e)}, outputs.data());
      f.attr("/outputs", "description",
             std::string("second pass output of every token of this rank (window + earlier buffer)"));
      f.close();
    }
    std::filesystem::rename(tmp, outputs_path);
  }
  return result;
}

}  // namespace proteus
