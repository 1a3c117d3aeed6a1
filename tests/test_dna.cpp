// DNA similarity, hybrid blend, tokens caught and the EMA update against a hand computation
// in double on a tiny case.
#include <cmath>
#include <vector>

#include "proteus/dna.hpp"
#include "proteus/router.hpp"
#include "test_space.hpp"
#include "reference.hpp"

using namespace proteus;
using test::Matrix;

namespace {
Config tiny_config() {
  Config c;
  c.embed_dim = 4;
  c.num_heads = 1;
  c.num_gates = 3;
  c.rope = false;
  c.dna_usage_boost = 0.15f;
  return c.resolved();
}
}  // namespace

PROTEUS_TEST_CASE("DNA similarity, blend and importance match a hand computation", "[dna]") {
  Config const c = tiny_config();
  // Tokens: two aligned with prototype 0 and 2, one orthogonal to all, one opposite to proto 1.
  Matrix x = {{2, 0, 0, 0}, {0, 0, 1, 1}, {0, 0, 0, 3}, {0, -1, 0, 0}, {1, 1, 1, 1}};
  Matrix p = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0.5}};
  Matrix wr = {{0.3, -0.2, 0.1, 0.0}, {0.0, 0.5, -0.4, 0.2}, {-0.1, 0.1, 0.2, 0.3}};
  std::vector<double> conf = {0.5, 0.1, 0.9}, usage = {3.0, 1.0, 0.5};
  int const T = 5, G = 3, E = 4;

  DnaState dna = DnaState::allocate(G, E);
  Kokkos::deep_copy(dna.prototypes, test::to_device(p));
  {
    auto hc = Kokkos::create_mirror_view(dna.confidence);
    auto hu = Kokkos::create_mirror_view(dna.usage);
    for (int g = 0; g < G; ++g) hc(g) = static_cast<float>(conf[g]), hu(g) = static_cast<float>(usage[g]);
    Kokkos::deep_copy(dna.confidence, hc);
    Kokkos::deep_copy(dna.usage, hu);
  }
  TokenMatrix xd = test::to_device(x);
  GateMatrix rp("rp", T, G), sim("sim", T, G);
  router_probabilities(TEST_EXECSPACE(), xd, test::to_device(wr), rp);
  dna_similarity(TEST_EXECSPACE(), xd, dna.prototypes, sim);
  Routing out = Routing::allocate(T, G);
  hybrid_route(TEST_EXECSPACE(), c, rp, sim, dna, out);

  Matrix gp = test::to_host_matrix(out.gate_probs), simh = test::to_host_matrix(sim);
  auto sal = test::to_host_vector(out.salience), beta = test::to_host_vector(out.beta),
       imp = test::to_host_vector(out.importance);
  long caught = 0, caught_ref = 0;
  for (int t = 0; t < T; ++t) {
    // Router softmax.
    std::vector<double> logit(G), router(G);
    double lz = 0;
    for (int g = 0; g < G; ++g) {
      for (int e = 0; e < E; ++e) logit[g] += x[t][e] * wr[g][e];
      lz += std::exp(logit[g]);
    }
    for (int g = 0; g < G; ++g) router[g] = std::exp(logit[g]) / lz;
    // Cosine similarity and s_max.
    std::vector<double> s(G);
    double smax = -2;
    for (int g = 0; g < G; ++g) {
      double dot = 0, nx = 0, np = 0;
      for (int e = 0; e < E; ++e) dot += x[t][e] * p[g][e], nx += x[t][e] * x[t][e], np += p[g][e] * p[g][e];
      s[g] = dot / (std::sqrt(nx) * std::sqrt(np));
      smax = std::max(smax, s[g]);
      CHECK(simh[t][g] == Approx(s[g]).margin(1e-6));
    }
    // Prototype distribution weighted by confidence; blend; usage boost; renormalise.
    std::vector<double> proto(G);
    double pz = 0, wz = 0;
    for (int g = 0; g < G; ++g) pz += std::exp(s[g] / 0.2);
    for (int g = 0; g < G; ++g) wz += std::exp(s[g] / 0.2) / pz * (conf[g] + 1e-6);
    for (int g = 0; g < G; ++g) proto[g] = std::exp(s[g] / 0.2) / pz * (conf[g] + 1e-6) / wz;
    double const b = std::clamp((smax - 0.25) / 0.75, 0.0, 1.0);
    double uz = 0;
    for (int g = 0; g < G; ++g) uz += std::exp(-(usage[g] + 1e-6));
    std::vector<double> mix(G);
    double total = 0, gmax = 0;
    for (int g = 0; g < G; ++g) {
      mix[g] = (1 - 0.6 * b) * router[g] + 0.6 * b * proto[g] + std::exp(-(usage[g] + 1e-6)) / uz * (1 - b) * 0.15;
      total += mix[g];
    }
    for (int g = 0; g < G; ++g) {
      mix[g] /= total;
      gmax = std::max(gmax, mix[g]);
      CHECK(gp[t][g] == Approx(mix[g]).margin(1e-6));
    }
    CHECK(sal[t] == Approx(smax).margin(1e-6));
    CHECK(beta[t] == Approx(b).margin(1e-6));
    CHECK(imp[t] == Approx((1 - b) * gmax + b * smax).margin(1e-6));
    caught_ref += b > 0;
    caught += beta[t] > 0;
  }
  CHECK(caught == caught_ref);
  CHECK(caught == 4);  // only token 3 (opposite to every prototype) stays below theta
}

PROTEUS_TEST_CASE("DNA EMA update matches the formula; gates with no mass are left alone", "[dna][ema]") {
  int const G = 3, E = 2, T = 4;
  Matrix x = {{1, 2}, {3, -1}, {0, 4}, {-2, 1}};
  Matrix gp = {{0.5, 0.5, 0}, {0.25, 0.75, 0}, {1, 0, 0}, {0.1, 0.9, 0}};  // gate 2 gets nothing
  Matrix p0 = {{0.1, 0.2}, {-0.3, 0.4}, {0.5, 0.6}};
  DnaState dna = DnaState::allocate(G, E);
  Kokkos::deep_copy(dna.prototypes, test::to_device(p0));
  Kokkos::deep_copy(dna.usage, 2.0f);
  Kokkos::deep_copy(dna.confidence, 0.5f);
  DnaStatistics stats = DnaStatistics::allocate(G, E);
  dna_statistics(TEST_EXECSPACE(), test::to_device(x), test::to_device(gp), stats);
  int const updated = dna_ema_update(TEST_EXECSPACE(), 0.97f, stats, dna);
  CHECK(updated == 2);
  Matrix p = test::to_host_matrix(dna.prototypes);
  auto usage = test::to_host_vector(dna.usage), conf = test::to_host_vector(dna.confidence);
  for (int g = 0; g < G; ++g) {
    double count = 0;
    std::vector<double> sum(E, 0.0);
    for (int t = 0; t < T; ++t) {
      count += gp[t][g];
      for (int e = 0; e < E; ++e) sum[e] += gp[t][g] * x[t][e];
    }
    bool const hit = count > 1e-6;
    for (int e = 0; e < E; ++e)
      CHECK(p[g][e] == Approx(hit ? 0.97 * p0[g][e] + 0.03 * sum[e] / count : p0[g][e]).margin(1e-6));
    CHECK(usage[g] == Approx(0.97 * 2.0 + (hit ? 0.03 * count : 0.0)).margin(1e-6));
    CHECK(conf[g] == Approx(0.97 * 0.5 + (hit ? 0.03 : 0.0)).margin(1e-6));
  }
}

PROTEUS_TEST_CASE("without DNA the router decides alone", "[dna]") {
  Config c = tiny_config();
  c.dna_enable = false;
  Matrix x = test::random_matrix(6, 4, 3);
  GateMatrix rp("rp", 6, 3);
  router_probabilities(TEST_EXECSPACE(), test::to_device(x), test::to_device(test::random_matrix(3, 4, 4)), rp);
  Routing out = Routing::allocate(6, 3);
  hybrid_route(TEST_EXECSPACE(), c, rp, GateMatrix(), DnaState::allocate(3, 4), out);
  Matrix r = test::to_host_matrix(rp), g = test::to_host_matrix(out.gate_probs);
  CHECK(r == g);
  for (double b : test::to_host_vector(out.beta)) CHECK(b == 0.0);
}
