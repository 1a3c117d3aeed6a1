// Shared by the parity tests: moving recorded data between host vectors and Views, and the error
// measure of docs/parity.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <Kokkos_Core.hpp>

#include "proteus/types.hpp"
#include "proteus_catch.hpp"

namespace proteus::test {

// Copies a host vector into a device View of the same element count.
template <class View, class T>
View to_device(std::string const& label, std::vector<T> const& data, long rows, long cols = 0) {
  View v;
  if constexpr (View::rank == 1) v = View(label, rows);
  else v = View(label, rows, cols);
  auto h = Kokkos::create_mirror_view(v);
  REQUIRE(data.size() == h.size());
  for (size_t i = 0; i < data.size(); ++i) h.data()[i] = static_cast<typename View::value_type>(data[i]);
  Kokkos::deep_copy(v, h);
  return v;
}

template <class View>
std::vector<double> to_host(View const& v) {
  auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), v);
  return std::vector<double>(h.data(), h.data() + h.size());
}

template <class View>
std::vector<float> to_host_float(View const& v) {
  auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), v);
  return std::vector<float>(h.data(), h.data() + h.size());
}

// Largest |ours - theirs| / (|theirs| + scale), scale = RMS of theirs: a relative error that
// does not blow up on entries that are zero up to cancellation.
inline double scaled_error(std::vector<double> const& ours, std::vector<float> const& theirs) {
  REQUIRE(ours.size() == theirs.size());
  double rms = 0;
  for (float t : theirs) rms += double(t) * t;
  rms = std::sqrt(rms / std::max<size_t>(1, theirs.size()));
  double worst = 0;
  for (size_t i = 0; i < ours.size(); ++i)
    worst = std::max(worst, std::fabs(ours[i] - theirs[i]) / (std::fabs(double(theirs[i])) + rms));
  return worst;
}

// Entries where one side is set and the other is not.
template <class T>
long mismatches(std::vector<double> const& ours, std::vector<T> const& theirs) {
  REQUIRE(ours.size() == theirs.size());
  long n = 0;
  for (size_t i = 0; i < ours.size(); ++i) n += (ours[i] != 0) != (theirs[i] != 0) ? 1 : 0;
  return n;
}

}  // namespace proteus::test
