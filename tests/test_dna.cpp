// DNA similarity, hybrid blend, tokens caught and the EMA update against a hand computation
// in double on a tiny case.
#include <algorithm>
#include <cmath>
#include <vector>

#include "proteus/dna.hpp"
#include "proteus/error.hpp"
#include "proteus/router.hpp"
#include "reference.hpp"
#include "test_space.hpp"

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

// One token routed in double: router softmax, cosine similarities, the confidence-weighted
// prototype distribution, the blend with the usage boost, renormalised (SPEC stage 2).
struct RoutedToken {
  std::vector<double> router, sim, mix;  // the router's probabilities, cosines, blended gates
  double smax = -2, beta = 0, importance = 0;
};

RoutedToken route_reference(Config const& c, std::vector<double> const& x, Matrix const& p, Matrix const& wr,
                            std::vector<double> const& conf, std::vector<double> const& usage) {
  size_t const G = p.size(), E = x.size();
  RoutedToken r;
  std::vector<double> logit(G), router(G);
  double lz = 0;
  for (size_t g = 0; g < G; ++g) {
    for (size_t e = 0; e < E; ++e) logit[g] += x[e] * wr[g][e];
    lz += std::exp(logit[g]);
  }
  for (size_t g = 0; g < G; ++g) router[g] = std::exp(logit[g]) / lz;
  r.router = router;
  r.sim.resize(G);
  for (size_t g = 0; g < G; ++g) {
    double dot = 0, nx = 0, np = 0;
    for (size_t e = 0; e < E; ++e) dot += x[e] * p[g][e], nx += x[e] * x[e], np += p[g][e] * p[g][e];
    r.sim[g] = dot / (std::sqrt(nx) * std::sqrt(np));
    r.smax = std::max(r.smax, r.sim[g]);
  }
  double const tau = c.dna_temperature, theta = c.dna_threshold, lambda = c.dna_blend, boost = c.dna_usage_boost;
  double pz = 0, wz = 0, uz = 0;
  for (size_t g = 0; g < G; ++g) pz += std::exp(r.sim[g] / tau);
  for (size_t g = 0; g < G; ++g) wz += std::exp(r.sim[g] / tau) / pz * (conf[g] + 1e-6);
  for (size_t g = 0; g < G; ++g) uz += std::exp(-usage[g]);
  r.beta = std::clamp((r.smax - theta) / (1 - theta), 0.0, 1.0);
  r.mix.resize(G);
  double total = 0, gmax = 0;
  for (size_t g = 0; g < G; ++g) {
    double const proto = std::exp(r.sim[g] / tau) / pz * (conf[g] + 1e-6) / wz;
    r.mix[g] =
        (1 - lambda * r.beta) * router[g] + lambda * r.beta * proto + std::exp(-usage[g]) / uz * (1 - r.beta) * boost;
    total += r.mix[g];
  }
  for (size_t g = 0; g < G; ++g) {
    r.mix[g] /= total;
    gmax = std::max(gmax, r.mix[g]);
  }
  r.importance = (1 - r.beta) * gmax + r.beta * r.smax;
  return r;
}

DnaState dna_state(Matrix const& p, std::vector<double> const& conf, std::vector<double> const& usage) {
  int const G = static_cast<int>(p.size()), E = static_cast<int>(p[0].size());
  DnaState dna = DnaState::allocate(G, E);
  Kokkos::deep_copy(dna.prototypes, test::to_device(p));
  auto hc = Kokkos::create_mirror_view(dna.confidence);
  auto hu = Kokkos::create_mirror_view(dna.usage);
  for (int g = 0; g < G; ++g) hc(g) = static_cast<float>(conf[g]), hu(g) = static_cast<float>(usage[g]);
  Kokkos::deep_copy(dna.confidence, hc);
  Kokkos::deep_copy(dna.usage, hu);
  return dna;
}
}  // namespace

PROTEUS_TEST_CASE("DNA similarity, blend and importance match a hand computation", "[dna]") {
  Config const c = tiny_config();
  // Tokens: two aligned with prototype 0 and 2, one orthogonal to all, one opposite to proto 1.
  Matrix x = {{2, 0, 0, 0}, {0, 0, 1, 1}, {0, 0, 0, 3}, {0, -1, 0, 0}, {1, 1, 1, 1}};
  Matrix p = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0.5}};
  Matrix wr = {{0.3, -0.2, 0.1, 0.0}, {0.0, 0.5, -0.4, 0.2}, {-0.1, 0.1, 0.2, 0.3}};
  std::vector<double> conf = {0.5, 0.1, 0.9}, usage = {3.0, 1.0, 0.5};
  int const T = 5, G = 3;

  DnaState const dna = dna_state(p, conf, usage);
  TokenMatrix xd = test::to_device(x);
  GateMatrix rp("rp", T, G), sim("sim", T, G);
  router_probabilities(TEST_EXECSPACE(), xd, test::to_device(wr), rp);
  dna_similarity(TEST_EXECSPACE(), xd, dna.prototypes, sim);
  Routing out = Routing::allocate(T, G);
  hybrid_route(TEST_EXECSPACE(), c, rp, sim, dna, out);

  Matrix gp = test::to_host_matrix(out.gate_probs), simh = test::to_host_matrix(sim);
  auto sal = test::to_host_vector(out.salience), beta = test::to_host_vector(out.beta),
       imp = test::to_host_vector(out.importance);
  long caught = 0;
  for (int t = 0; t < T; ++t) {
    RoutedToken const r = route_reference(c, x[t], p, wr, conf, usage);
    for (int g = 0; g < G; ++g) {
      CHECK(simh[t][g] == Approx(r.sim[g]).margin(1e-6));
      CHECK(gp[t][g] == Approx(r.mix[g]).margin(1e-6));
    }
    CHECK(sal[t] == Approx(r.smax).margin(1e-6));
    CHECK(beta[t] == Approx(r.beta).margin(1e-6));
    CHECK(imp[t] == Approx(r.importance).margin(1e-6));
    caught += beta[t] > 0;
  }
  CHECK(caught == 4);  // only token 3 (opposite to every prototype) stays below theta
}

PROTEUS_TEST_CASE("routing of many gates matches the double reference on every lane layout", "[dna]") {
  // 64 gates: eight lanes per token on GPUs, four tokens to a warp; 6 gates: one lane. Random
  // tokens and prototypes, so that the blend strength spans (0, 1).
  int const G = GENERATE(6, 64);
  int const T = 37, E = 16;
  Config c = tiny_config();
  c.embed_dim = E;
  c.num_gates = G;
  c.gate_to_head.clear();
  c.dna_threshold = 0.1f;
  c = c.resolved();
  Matrix const x = test::random_matrix(T, E, 31), p = test::random_matrix(G, E, 32),
               wr = test::random_matrix(G, E, 33, 0.5);
  std::vector<double> conf(G), usage(G);
  for (int g = 0; g < G; ++g) conf[g] = 0.1 + 0.8 * (g % 5) / 4.0, usage[g] = 0.25 * (g % 7);
  DnaState const dna = dna_state(p, conf, usage);
  TokenMatrix const xd = test::to_device(x);
  GateMatrix rp("rp", T, G), sim("sim", T, G);
  router_probabilities(TEST_EXECSPACE(), xd, test::to_device(wr), rp);
  dna_similarity(TEST_EXECSPACE(), xd, dna.prototypes, sim);
  Routing out = Routing::allocate(T, G);
  hybrid_route(TEST_EXECSPACE(), c, rp, sim, dna, out);
  Matrix const gp = test::to_host_matrix(out.gate_probs), simh = test::to_host_matrix(sim);
  auto const sal = test::to_host_vector(out.salience), beta = test::to_host_vector(out.beta),
             imp = test::to_host_vector(out.importance);
  int blended = 0;
  for (int t = 0; t < T; ++t) {
    RoutedToken const r = route_reference(c, x[t], p, wr, conf, usage);
    INFO("G " << G << " token " << t);
    double sum = 0;
    for (int g = 0; g < G; ++g) {
      CHECK(simh[t][g] == Approx(r.sim[g]).margin(1e-6));
      CHECK(gp[t][g] == Approx(r.mix[g]).margin(2e-6));  // float sums of 64 terms near 1
      sum += gp[t][g];
    }
    CHECK(sum == Approx(1.0).margin(1e-5));
    CHECK(sal[t] == Approx(r.smax).margin(1e-6));
    CHECK(beta[t] == Approx(r.beta).margin(1e-5));
    CHECK(imp[t] == Approx(r.importance).margin(1e-5));
    blended += r.beta > 0 && r.beta < 1;
  }
  CHECK(blended > T / 4);  // the blend's both sides are exercised
  // From the similarity's parts (the module's way, each cosine divided as it is read): the same
  // reference margins, and within 1e-6 of the cosine matrix's routing. Not to the bit: on GPUs the
  // two instantiations of the routing kernel may contract products into FMAs differently.
  GateMatrix dots("dots", T, G);
  TokenVector token_norms;
  GateVector prototype_norms, usage_bias;
  CosineParts const parts =
      dna_similarity_parts(TEST_EXECSPACE(), xd, dna.prototypes, dots, token_norms, prototype_norms);
  Routing fused = Routing::allocate(T, G);
  hybrid_route(TEST_EXECSPACE(), c, rp, parts, dna, fused, usage_bias);
  Matrix const gp_fused = test::to_host_matrix(fused.gate_probs);
  auto const sal_fused = test::to_host_vector(fused.salience), beta_fused = test::to_host_vector(fused.beta),
             imp_fused = test::to_host_vector(fused.importance);
  double gap = 0;
  for (int t = 0; t < T; ++t) {
    RoutedToken const r = route_reference(c, x[t], p, wr, conf, usage);
    INFO("parts: G " << G << " token " << t);
    for (int g = 0; g < G; ++g) {
      CHECK(gp_fused[t][g] == Approx(r.mix[g]).margin(2e-6));
      gap = std::max(gap, std::abs(gp_fused[t][g] - gp[t][g]));
    }
    CHECK(sal_fused[t] == Approx(r.smax).margin(1e-6));
    CHECK(beta_fused[t] == Approx(r.beta).margin(1e-5));
    CHECK(imp_fused[t] == Approx(r.importance).margin(1e-5));
    gap = std::max(
        {gap, std::abs(sal_fused[t] - sal[t]), std::abs(beta_fused[t] - beta[t]), std::abs(imp_fused[t] - imp[t])});
  }
  CHECK(gap <= 1e-6);
  // From the router's logits (the module's way, the softmax taken as they are read): the same
  // routing within 1e-6, the same reference margins; with keep_probabilities the logits become
  // router_probabilities' values to the bit (the same reductions and division).
  GateMatrix const logits("logits", T, G);
  router_logits(TEST_EXECSPACE(), xd, test::to_device(wr), logits);
  Routing from_logits = Routing::allocate(T, G);
  hybrid_route(TEST_EXECSPACE(), c, RouterLogits{logits, true}, parts, dna, from_logits, usage_bias);
  Matrix const gp_logits = test::to_host_matrix(from_logits.gate_probs), kept = test::to_host_matrix(logits),
               rph = test::to_host_matrix(rp);
  auto const imp_logits = test::to_host_vector(from_logits.importance);
  auto const beta_logits = test::to_host_vector(from_logits.beta);
  double logit_gap = 0;
  long kept_differing = 0;
  for (int t = 0; t < T; ++t) {
    RoutedToken const r = route_reference(c, x[t], p, wr, conf, usage);
    INFO("logits: G " << G << " token " << t);
    for (int g = 0; g < G; ++g) {
      CHECK(gp_logits[t][g] == Approx(r.mix[g]).margin(2e-6));
      logit_gap = std::max(logit_gap, std::abs(gp_logits[t][g] - gp_fused[t][g]));
      kept_differing += kept[t][g] != rph[t][g];
    }
    CHECK(beta_logits[t] == Approx(r.beta).margin(1e-5));
    CHECK(imp_logits[t] == Approx(r.importance).margin(1e-5));
    logit_gap = std::max({logit_gap, std::abs(imp_logits[t] - imp_fused[t]), std::abs(beta_logits[t] - beta_fused[t])});
  }
  CHECK(logit_gap <= 1e-6);
  CHECK(kept_differing == 0);
  // Without DNA: the gates are the router's probabilities, importance their largest; the logits
  // stay logits without keep_probabilities.
  Config off = c;
  off.dna_enable = false;
  router_logits(TEST_EXECSPACE(), xd, test::to_device(wr), logits);
  Matrix const raw = test::to_host_matrix(logits);
  hybrid_route(TEST_EXECSPACE(), off, RouterLogits{logits, false}, dna, from_logits, usage_bias);
  Matrix const gp_off = test::to_host_matrix(from_logits.gate_probs), after = test::to_host_matrix(logits);
  auto const imp_off = test::to_host_vector(from_logits.importance);
  long logits_changed = 0;
  for (int t = 0; t < T; ++t) {
    RoutedToken const r = route_reference(c, x[t], p, wr, conf, usage);
    double const rmax = *std::max_element(r.router.begin(), r.router.end());
    for (int g = 0; g < G; ++g) {
      CHECK(gp_off[t][g] == Approx(r.router[g]).margin(1e-6));
      logits_changed += after[t][g] != raw[t][g];
    }
    CHECK(imp_off[t] == Approx(rmax).margin(1e-6));
  }
  CHECK(logits_changed == 0);
  CHECK_THROWS_AS(hybrid_route(TEST_EXECSPACE(), c, RouterLogits{logits, false}, dna, from_logits, usage_bias),
                  proteus::Error);
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
