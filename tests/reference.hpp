// Independent double-precision references for the tests: plain loops on the host, written from
// SPEC.md, sharing no code with the kernels they check.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <Kokkos_Core.hpp>

#include "proteus/types.hpp"

namespace proteus::test {

using Matrix = std::vector<std::vector<double>>;  // [rows][cols]

template <class View>
Matrix to_host_matrix(View const& v) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  Matrix m(h.extent(0), std::vector<double>(h.extent(1)));
  for (size_t i = 0; i < h.extent(0); ++i)
    for (size_t j = 0; j < h.extent(1); ++j) m[i][j] = h(i, j);
  return m;
}

template <class View>
std::vector<double> to_host_vector(View const& v) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  std::vector<double> out(h.extent(0));
  for (size_t i = 0; i < h.extent(0); ++i) out[i] = h(i);
  return out;
}

inline TokenMatrix to_device(Matrix const& m) {
  TokenMatrix v("test::matrix", m.size(), m.empty() ? 0 : m[0].size());
  auto h = Kokkos::create_mirror_view(v);
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t j = 0; j < m[i].size(); ++j) h(i, j) = static_cast<float>(m[i][j]);
  Kokkos::deep_copy(v, h);
  return v;
}

// y = x W^T + b (torch Linear).
inline Matrix linear(Matrix const& x, Matrix const& w, std::vector<double> const& b) {
  Matrix y(x.size(), std::vector<double>(w.size(), 0.0));
  for (size_t t = 0; t < x.size(); ++t)
    for (size_t o = 0; o < w.size(); ++o) {
      double s = b.empty() ? 0.0 : b[o];
      for (size_t i = 0; i < x[t].size(); ++i) s += x[t][i] * w[o][i];
      y[t][o] = s;
    }
  return y;
}

// Interleaved-pair RoPE of one head vector at position pos.
inline void rope_inplace(double* v, int d, double pos, double base) {
  for (int i = 0; i < d / 2; ++i) {
    double const a = pos * std::pow(base, -2.0 * i / d);
    double const c = std::cos(a), s = std::sin(a);
    double const x0 = v[2 * i], x1 = v[2 * i + 1];
    v[2 * i] = x0 * c - x1 * s;
    v[2 * i + 1] = x1 * c + x0 * s;
  }
}

// Causal multi-head attention of one batch row x [T x E]; `allowed(h, i, j)` restricts the keys
// (default: every j <= i). Rows with `active(h, i)` false give zeros (before the output proj).
template <class Allowed, class Active>
Matrix attention_reference(Matrix const& x, std::vector<std::int64_t> const& pos, Matrix const& wqkv,
                           std::vector<double> const& bqkv, Matrix const& wout,
                           std::vector<double> const& bout, int heads, bool rope, double base,
                           Allowed allowed, Active active) {
  size_t const T = x.size();
  int const E = static_cast<int>(x[0].size()), D = E / heads;
  Matrix qkv = linear(x, wqkv, bqkv);
  Matrix ctx(T, std::vector<double>(E, 0.0));
  for (int h = 0; h < heads; ++h) {
    std::vector<std::vector<double>> q(T), k(T), v(T);
    for (size_t t = 0; t < T; ++t) {
      q[t].assign(qkv[t].begin() + h * D, qkv[t].begin() + (h + 1) * D);
      k[t].assign(qkv[t].begin() + E + h * D, qkv[t].begin() + E + (h + 1) * D);
      v[t].assign(qkv[t].begin() + 2 * E + h * D, qkv[t].begin() + 2 * E + (h + 1) * D);
      if (rope) {
        rope_inplace(q[t].data(), D, static_cast<double>(pos[t]), base);
        rope_inplace(k[t].data(), D, static_cast<double>(pos[t]), base);
      }
    }
    for (size_t i = 0; i < T; ++i) {
      if (!active(h, i)) continue;
      std::vector<double> s;
      std::vector<size_t> js;
      for (size_t j = 0; j <= i; ++j)
        if (allowed(h, i, j)) {
          double dot = 0.0;
          for (int c = 0; c < D; ++c) dot += q[i][c] * k[j][c];
          s.push_back(dot / std::sqrt(static_cast<double>(D)));
          js.push_back(j);
        }
      double m = *std::max_element(s.begin(), s.end()), z = 0.0;
      for (double& e : s) z += (e = std::exp(e - m));
      for (size_t n = 0; n < js.size(); ++n)
        for (int c = 0; c < D; ++c) ctx[i][h * D + c] += s[n] / z * v[js[n]][c];
    }
  }
  return linear(ctx, wout, bout);
}

inline double relative_error(Matrix const& a, Matrix const& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < a[i].size(); ++j) {
      num += (a[i][j] - b[i][j]) * (a[i][j] - b[i][j]);
      den += b[i][j] * b[i][j];
    }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Deterministic test inputs: N(0,1) from std::mt19937_64-free LCG so references need no library.
inline Matrix random_matrix(size_t rows, size_t cols, std::uint64_t seed, double scale = 1.0) {
  Matrix m(rows, std::vector<double>(cols));
  std::uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  auto next = [&] {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return (static_cast<double>(s >> 11) + 0.5) / 9007199254740992.0;
  };
  for (auto& r : m)
    for (auto& e : r) {
      double const u1 = next(), u2 = next();
      e = scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
  return m;
}

}  // namespace proteus::test
