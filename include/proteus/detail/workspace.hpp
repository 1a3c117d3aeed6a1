// Buffers kept between calls: a device allocation costs a malloc, a free and a fence or two on
// GPUs (about 30 per forward before these helpers), so stages that run again and again take
// their scratch from buffers that grow but are never freed between calls.
#pragma once

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <string>
#include <utility>

namespace proteus::detail {

// v, reallocated (uninitialised) only when its shape differs from the one asked for.
template <class View, class... Dims>
View const& reuse(View& v, std::string const& label, Dims... dims) {
  size_t const want[] = {static_cast<size_t>(dims)...};
  bool same = v.data() != nullptr;
  for (size_t i = 0; i < sizeof...(Dims); ++i) same = same && v.extent(i) == want[i];
  if (!same) {
    v = View();  // release first, so that peak memory does not hold both
    v = View(Kokkos::view_alloc(label, Kokkos::WithoutInitializing), dims...);
  }
  return v;
}

// The first `rows` rows of a buffer of `cols` columns (or entries of a 1-D buffer): the buffer is
// reallocated (uninitialised, to exactly that size) only when it is too short or of another
// width, so that calls of varying size share one allocation.
template <class View>
View first_rows(View& buffer, std::string const& label, long rows, long cols = 1) {
  static_assert(View::rank == 1 || View::rank == 2, "1-D or 2-D buffers");
  bool const fits = buffer.data() != nullptr && static_cast<long>(buffer.extent(0)) >= rows &&
                    (View::rank == 1 || static_cast<long>(buffer.extent(1)) == cols);
  if (!fits) {
    long const grown = std::max(1L, rows);
    buffer = View();
    if constexpr (View::rank == 1)
      buffer = View(Kokkos::view_alloc(label, Kokkos::WithoutInitializing), grown);
    else
      buffer = View(Kokkos::view_alloc(label, Kokkos::WithoutInitializing), grown, cols);
  }
  if constexpr (View::rank == 1)
    return Kokkos::subview(buffer, std::make_pair(0L, rows));
  else
    return Kokkos::subview(buffer, std::make_pair(0L, rows), Kokkos::ALL);
}

}  // namespace proteus::detail
