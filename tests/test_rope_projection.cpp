// Stages 5 and 7: the Q/K/V and output projections (KokkosBlas GEMMs in torch.nn.Linear layout)
// and the bias + RoPE pass, each against a double-precision reference on the host.
#include <cmath>
#include <vector>

#include "proteus/projection.hpp"
#include "proteus/rope.hpp"
#include "reference.hpp"
#include "test_space.hpp"

using namespace proteus;
using test::Matrix;

namespace {

Matrix rows_of(Matrix const& m, size_t first, size_t count) {
  return Matrix(m.begin() + first, m.begin() + first + count);
}

// The largest |a - b| over every entry, relative to the largest |b|.
double max_gap(Matrix const& a, Matrix const& b) {
  double gap = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < a[i].size(); ++j) {
      gap = std::max(gap, std::fabs(a[i][j] - b[i][j]));
      scale = std::max(scale, std::fabs(b[i][j]));
    }
  return gap / std::max(scale, 1e-300);
}

}  // namespace

namespace {
Matrix as_is(Matrix m) { return m; }

// The operands as BF16 rounds them (to nearest even), widened back exactly.
Matrix rounded_to_bf16(Matrix m) {
  for (auto& row : m)
    for (double& v : row) v = detail::to_float(detail::to_bf16(static_cast<float>(v)));
  return m;
}

// The Q, K|V and output projections of random rows in `precision` against the double products of
// their operands as `operand` leaves them: FP32 sums of E products of O(1) terms are the only
// error, a few float roundoffs of the largest entry. Returns x and the host copy of q.
std::pair<Matrix, Matrix> check_projections(ExecSpace const& space, GemmPrecision precision, Matrix (*operand)(Matrix),
                                            Weights const& w, Bf16Operands* kept) {
  long const e = static_cast<long>(w.out_weight.extent(0)), n = 41;
  Matrix const x = test::random_matrix(n, e, 5);
  Matrix const xo = operand(x), wqkv = operand(test::to_host_matrix(w.qkv_weight));
  Matrix const wout = operand(test::to_host_matrix(w.out_weight));
  TokenMatrix q("q", n, e), kv("kv", n, 2 * e), y("y", n, e);
  project_q(space, test::to_device(x), w, q, precision, kept);
  project_kv(space, test::to_device(x), w, kv, precision, kept);
  project_output(space, test::to_device(x), w, y, precision, kept);
  Matrix const qh = test::to_host_matrix(q);
  CHECK(max_gap(qh, test::linear(xo, rows_of(wqkv, 0, e), {})) < 1e-5);
  CHECK(max_gap(test::to_host_matrix(kv), test::linear(xo, rows_of(wqkv, e, 2 * e), {})) < 1e-5);
  CHECK(max_gap(test::to_host_matrix(y), test::linear(xo, wout, test::to_host_vector(w.out_bias))) < 1e-5);
  return {x, qh};
}

Weights initialised_weights(ExecSpace const& space, int e, std::uint64_t seed) {
  Weights const w = Weights::allocate(e, 8);
  w.initialise(space, seed, true);
  return w;
}
}  // namespace

PROTEUS_TEST_CASE("projections equal x W^T (+ b) in double", "[projection]") {
  TEST_EXECSPACE space;
  check_projections(space, GemmPrecision::fp32, as_is, initialised_weights(space, 48, 11), nullptr);
}

PROTEUS_TEST_CASE("BF16 projections equal the GEMMs of the operands rounded to BF16, in double",
                  "[projection][bfloat16]") {
  TEST_EXECSPACE space;
  Weights const w = initialised_weights(space, 64, 13);
  // With buffers kept between calls (the module's way), then with buffers of the call's own.
  Bf16Operands kept;
  auto const [x, q] = check_projections(space, GemmPrecision::bf16, rounded_to_bf16, w, &kept);
  check_projections(space, GemmPrecision::bf16, rounded_to_bf16, w, nullptr);
  // Against the unrounded operands the gap is BF16's (u = 2^-9): it shows the rounding happened.
  long const e = 64;
  double const unrounded = max_gap(q, test::linear(x, rows_of(test::to_host_matrix(w.qkv_weight), 0, e), {}));
  INFO("gap to the FP32 operands' product " << unrounded);
  CHECK(unrounded > 1e-4);
  CHECK(unrounded < 1e-2);
  // Rows of 6 entries (not whole 16-byte pieces) are rounded one entry per work item.
  check_projections(space, GemmPrecision::bf16, rounded_to_bf16, initialised_weights(space, 6, 17), nullptr);
  // The weights rounded once for every GEMM (a forward's way): each GEMM reads its own rows of them.
  Bf16Operands once;
  round_weights(space, w, once);
  check_projections(space, GemmPrecision::bf16, rounded_to_bf16, w, &once);
}

PROTEUS_TEST_CASE("bias + RoPE rotates each head's pairs at the original position, in place", "[rope]") {
  TEST_EXECSPACE space;
  // Heads of 8 columns are turned two pairs per access, heads of 6 one pair per access.
  int const heads = GENERATE(3, 11), d = GENERATE(8, 6), e = heads * d;
  INFO("heads " << heads << " of " << d);
  long const n = 21;
  double const base = 10000.0;
  Matrix const m0 = test::random_matrix(n, 2 * e, 7);  // K | V
  std::vector<double> const bias = test::random_matrix(1, e, 9)[0];
  // Positions far from the row index, up to 10^7: the angle must keep its precision there.
  PositionVector pos("pos", n);
  auto hp = Kokkos::create_mirror_view(pos);
  for (long i = 0; i < n; ++i) hp(i) = i == 0 ? 0 : 10000000 + 37 * i;
  Kokkos::deep_copy(pos, hp);
  TokenVector b("bias", e);
  auto hb = Kokkos::create_mirror_view(b);
  for (int j = 0; j < e; ++j) hb(j) = static_cast<float>(bias[j]);
  Kokkos::deep_copy(b, hb);
  // A kept buffer for the angles, longer than needed and holding stale values.
  TokenMatrix turns("turns", n + 5, d);
  Kokkos::deep_copy(turns, 7.0f);
  for (bool rope : {true, false}) {
    TokenMatrix m = test::to_device(m0);
    bias_and_rope(space, m, b, pos, e, heads, 1, rope, base, &turns);
    Matrix want = test::to_host_matrix(test::to_device(m0));  // the float-rounded input
    for (long i = 0; i < n; ++i) {
      for (int j = 0; j < e; ++j) want[i][j] += static_cast<float>(bias[j]);
      if (rope)
        for (int h = 0; h < heads; ++h) test::rope_inplace(&want[i][h * d], d, static_cast<double>(hp(i)), base);
    }
    Matrix const got = test::to_host_matrix(m);
    INFO("rope " << rope);
    CHECK(max_gap(got, want) < 2e-6);  // float storage of O(3) values
    // V's half is left alone (its bias goes into the attention context).
    double untouched = 0.0;
    for (long i = 0; i < n; ++i)
      for (int j = e; j < 2 * e; ++j) untouched = std::max(untouched, std::fabs(got[i][j] - float(m0[i][j])));
    CHECK(untouched == 0.0);
    // Rows that start 8 bytes past a 16-byte boundary are turned one pair per access: the same
    // values to the bit.
    Kokkos::View<float*, MemSpace> padded("padded", n * 2 * e + 2);
    TokenMatrix const shifted(padded.data() + 2, n, 2 * e);
    Kokkos::deep_copy(shifted, test::to_device(m0));
    bias_and_rope(space, shifted, b, pos, e, heads, 1, rope, base);
    auto const pairwise = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), shifted);
    long differing = 0;
    for (long i = 0; i < n; ++i)
      for (int j = 0; j < 2 * e; ++j) differing += pairwise(i, j) != static_cast<float>(got[i][j]);
    CHECK(differing == 0);
  }
}

PROTEUS_TEST_CASE("bias + RoPE into BF16 head rows is the in-place pass rounded once, in the rows asked for",
                  "[rope][bfloat16]") {
  TEST_EXECSPACE space;
  // Heads of 16 and 8 columns: 16-byte pieces (two blocks of 32 rows); of 6: one pair per item.
  int const heads = 4, d = GENERATE(16, 8, 6), e = heads * d;
  INFO("heads of " << d);
  // Token rows r0 .. r0 + n - 1 of two batch rows of 30 tokens: the last rows of batch row 0 and
  // the first of batch row 1.
  long const n = 45, r0 = 7, tokens = 30, batch = 2, stored_rows = batch * tokens;
  Matrix const m0 = test::random_matrix(n, 2 * e, 17);  // K | V
  PositionVector pos("pos", n);
  auto hp = Kokkos::create_mirror_view(pos);
  for (long i = 0; i < n; ++i) hp(i) = 3 * i + 1000;
  Kokkos::deep_copy(pos, hp);
  TokenMatrix const b = test::to_device(test::random_matrix(1, e, 19));
  TokenVector const bias = Kokkos::subview(b, 0, Kokkos::ALL);
  for (bool rope : {true, false}) {
    TokenMatrix const in_place = test::to_device(m0), source = test::to_device(m0);
    bias_and_rope(space, in_place, bias, pos, e, heads, 1, rope, 10000.0);
    Bf16HeadRows const out("out", batch * heads, tokens, 2 * d);  // zeros: rows outside r0 .. r0 + n - 1 stay so
    bias_and_rope_to_bf16(space, source, bias, pos, e, heads, rope, 10000.0, out, r0);
    auto const want = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), in_place);
    auto const got = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), out);
    auto const kept = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), source);
    long differing = 0, nonzero_outside = 0, source_changed = 0;
    for (long i = 0; i < stored_rows; ++i)
      for (int j = 0; j < 2 * e; ++j) {
        // K|V column j of token row i: key (j < e) or value column j % d of head (j % e) / d.
        detail::bf16 const stored = got((i / tokens) * heads + (j % e) / d, i % tokens, (j / e) * d + j % d);
        bool const inside = i >= r0 && i < r0 + n;
        if (!inside) {
          nonzero_outside += stored.bits != 0;
          continue;
        }
        // V's half too: the in-place pass leaves it as it is, and it is rounded like K's.
        differing += stored.bits != detail::to_bf16(want(i - r0, j)).bits;
        source_changed += kept(i - r0, j) != static_cast<float>(m0[i - r0][j]);
      }
    INFO("rope " << rope);
    CHECK(differing == 0);
    CHECK(nonzero_outside == 0);
    CHECK(source_changed == 0);
  }
}

PROTEUS_TEST_CASE("RoPE's backward is the transpose of its rotation: <rope(x), g> = <x, rope_backward(g)>", "[rope]") {
  TEST_EXECSPACE space;
  // Heads of 8 columns: two pairs per access; of 6: one; rows 8 bytes past a 16-byte boundary: one.
  int const heads = 5, d = GENERATE(8, 6), e = heads * d;
  bool const shifted = GENERATE(false, true);
  INFO("heads of " << d << (shifted ? ", rows 8 bytes off" : ""));
  long const n = 23;
  double const base = 10000.0;
  Matrix const x = test::random_matrix(n, 2 * e, 41), g0 = test::random_matrix(n, 2 * e, 43);
  PositionVector pos("pos", n);
  auto hp = Kokkos::create_mirror_view(pos);
  for (long i = 0; i < n; ++i) hp(i) = i == 3 ? 0 : 5000000 + 101 * i;
  Kokkos::deep_copy(pos, hp);
  Kokkos::View<float*, MemSpace> padded("padded", n * 2 * e + 2);
  TokenMatrix const g(padded.data() + (shifted ? 2 : 0), n, 2 * e);
  Kokkos::deep_copy(g, test::to_device(g0));
  TokenMatrix turns("turns", 2, d);  // a kept buffer too short: it grows
  rope_backward(space, g, pos, e, heads, 1, true, base, &turns);
  auto const back = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), g);
  // In double: rotate x's K half forward, take both inner products over the K half; V's half of
  // g is left as it is.
  double forward = 0.0, transposed = 0.0, scale = 0.0, v_changed = 0.0;
  for (long i = 0; i < n; ++i) {
    std::vector<double> rx(x[i].begin(), x[i].begin() + e);
    for (int h = 0; h < heads; ++h) test::rope_inplace(&rx[h * d], d, static_cast<double>(hp(i)), base);
    for (int j = 0; j < e; ++j) {
      double const gj = static_cast<float>(g0[i][j]);
      forward += rx[j] * gj;
      transposed += x[i][j] * back(i, j);
      scale += std::fabs(rx[j] * gj);
    }
    for (int j = e; j < 2 * e; ++j) v_changed = std::max(v_changed, std::fabs(double(back(i, j)) - float(g0[i][j])));
  }
  // Each of the n e terms carries a few float roundoffs of the rotated gradient (|terms| <= scale).
  CHECK(std::fabs(forward - transposed) < 1e-6 * scale);
  CHECK(v_changed == 0.0);
  // Turning forward again gives g back (rotations are orthogonal): a few ulp per entry.
  bias_and_rope(space, g, TokenVector("zero_bias", e), pos, e, heads, 1, true, base);
  Matrix const again = test::to_host_matrix(g);
  double gap = 0.0;
  for (long i = 0; i < n; ++i)
    for (int j = 0; j < 2 * e; ++j) gap = std::max(gap, std::fabs(again[i][j] - float(g0[i][j])));
  CHECK(gap < 1e-6);
}
