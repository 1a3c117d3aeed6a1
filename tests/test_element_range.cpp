// The launch helpers of element-wise and per-token kernels (detail/element_range.hpp): every
// element, and every token, is visited exactly once, whatever the shape.
#include <Kokkos_Core.hpp>

#include "proteus/detail/element_range.hpp"
#include "test_space.hpp"

using namespace proteus;

TEST_CASE("for_each_element visits every element of any shape once", "[element_range]") {
  // Column counts around the four columns of a work item and around grouped_from (one column per
  // item below it, four from it on), and a wide row.
  for (long cols : {0L, 1L, 3L, 4L, 5L, 7L, 8L, 13L, 127L, 128L, 129L, 131L, 512L})
    for (long rows : {0L, 1L, 6L}) {
      Kokkos::View<int**, Kokkos::LayoutRight, MemSpace> visits("visits", rows, cols);
      detail::for_each_element(
          ExecSpace(), "test::element_visits", rows, cols,
          KOKKOS_LAMBDA(long r, long c) { Kokkos::atomic_add(&visits(r, c), static_cast<int>(1 + r * cols + c)); });
      auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), visits);
      long wrong = 0;
      for (long r = 0; r < rows; ++r)
        for (long c = 0; c < cols; ++c) wrong += h(r, c) != 1 + r * cols + c ? 1 : 0;  // once, with its own (r, c)
      INFO("rows " << rows << " cols " << cols);
      CHECK(wrong == 0);
    }
}

TEST_CASE("for_each_token visits every token once, with its lanes over the row", "[element_range]") {
  for (long tokens : {0L, 1L, 7L, 8L, 9L, 100L}) {
    int const width = 37;
    Kokkos::View<int**, Kokkos::LayoutRight, MemSpace> visits("visits", tokens, width);
    detail::for_each_token(ExecSpace(), "test::token_visits", tokens,
                           KOKKOS_LAMBDA(detail::TokenMember const& member, long t) {
                             Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, width),
                                                  [&](int j) { Kokkos::atomic_add(&visits(t, j), 1); });
                           });
    auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), visits);
    long wrong = 0;
    for (long t = 0; t < tokens; ++t)
      for (int j = 0; j < width; ++j) wrong += h(t, j) != 1 ? 1 : 0;
    INFO("tokens " << tokens);
    CHECK(wrong == 0);
  }
}
