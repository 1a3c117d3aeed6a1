// Stage 2: DNA similarity, hybrid blend with the router, and the EMA update of the prototypes.
// Reads x, router probabilities and the DNA state; writes gate probabilities, salience, beta,
// importance, and (update) the prototypes, usage and confidence.
#include "proteus/dna.hpp"

#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/softmax_state.hpp"
#include "proteus/detail/workspace.hpp"
#include "proteus/error.hpp"
#include "proteus/random.hpp"

namespace proteus {

namespace km = detail::kmath;

DnaState DnaState::allocate(int num_gates, int embed_dim, std::string const& label) {
  DnaState s;
  s.prototypes = GateByEmbed(label + "::prototypes", num_gates, embed_dim);
  s.usage = GateVector(label + "::usage", num_gates);
  s.confidence = GateVector(label + "::confidence", num_gates);
  return s;
}

void DnaState::initialise(ExecSpace const& space, std::uint64_t seed, float scale) const {
  auto p = prototypes;
  int const e = static_cast<int>(p.extent(1));
  detail::for_each_element(
      space, "proteus::dna::initialise", static_cast<long>(p.extent(0)), e, KOKKOS_LAMBDA(long g, long j) {
        p(g, j) =
            static_cast<float>(scale * detail::standard_normal(seed, detail::stream_prototypes, static_cast<std::uint64_t>(g) * e + j));
      });
  Kokkos::deep_copy(space, usage, 0.0f);
  Kokkos::deep_copy(space, confidence, 0.0f);
}

DnaState DnaState::clone(ExecSpace const& space) const {
  DnaState c =
      allocate(static_cast<int>(prototypes.extent(0)), static_cast<int>(prototypes.extent(1)), prototypes.label());
  Kokkos::deep_copy(space, c.prototypes, prototypes);
  Kokkos::deep_copy(space, c.usage, usage);
  Kokkos::deep_copy(space, c.confidence, confidence);
  return c;
}

Routing Routing::allocate(int tokens, int num_gates) {
  Routing r;
  r.gate_probs = GateMatrix(Kokkos::view_alloc("proteus::gate_probs", Kokkos::WithoutInitializing), tokens, num_gates);
  r.salience = TokenVector("proteus::salience", tokens);
  r.beta = TokenVector("proteus::beta", tokens);
  r.importance = TokenVector("proteus::importance", tokens);
  return r;
}

DnaStatistics DnaStatistics::allocate(int num_gates, int embed_dim) {
  DnaStatistics s;
  s.count = Kokkos::View<double*, MemSpace>("proteus::dna::count", num_gates);
  s.sums = Kokkos::View<double**, Kokkos::LayoutRight, MemSpace>("proteus::dna::sums", num_gates, embed_dim);
  return s;
}

namespace {
// Row L2 norms clamped below at 1e-6 (the eps of torch's normalize). Rows are read four floats
// per lane and load where they can be (a row's lanes then have four times the bytes in flight: a
// float per lane ran at about 1.7 TB/s on an H200).
void row_norms(ExecSpace const& space, GateByEmbed const& m, TokenVector const& norms, char const* label) {
  bool const quads = detail::rows_of_vectors(m);
  int const cols = static_cast<int>(m.extent(1)), items = quads ? cols / 4 : cols;
  long const pitch = static_cast<long>(m.stride(0));
  auto const* rows = reinterpret_cast<detail::FloatQuad const*>(m.data());
  detail::for_each_token(
      space, label, static_cast<long>(m.extent(0)), KOKKOS_LAMBDA(detail::TokenMember const& member, long i) {
        float s = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::ThreadVectorRange(member, items),
            [&](int j, float& sum) {
              if (!quads) {
                sum += m(i, j) * m(i, j);
                return;
              }
              detail::FloatQuad const f = rows[i * (pitch / 4) + j];
              sum += f.v[0] * f.v[0] + f.v[1] * f.v[1] + f.v[2] * f.v[2] + f.v[3] * f.v[3];
            },
            s);
        Kokkos::single(Kokkos::PerThread(member), [&]() {
          float const n = km::sqrt(s);
          norms(i) = n < 1e-6f ? 1e-6f : n;  // NaN stays NaN (the module's input check reads it)
        });
      });
}
}  // namespace

void dna_similarity(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& prototypes,
                    GateMatrix const& sim) {
  TokenVector token_norms;
  GateVector prototype_norms;
  dna_similarity(space, x, prototypes, sim, token_norms, prototype_norms);
}

CosineParts dna_similarity_parts(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& prototypes,
                                 GateMatrix const& dots, TokenVector& token_norms, GateVector& prototype_norms) {
  detail::gemm(space, "N", "T", 1.0f, x, prototypes, 0.0f, dots);
  return dna_cosine_parts(space, x, prototypes, dots, token_norms, prototype_norms);
}

CosineParts dna_cosine_parts(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& prototypes,
                             GateColumns const& dots, TokenVector& token_norms, GateVector& prototype_norms) {
  TokenVector const xn = detail::first_rows(token_norms, "proteus::dna::token_norm", static_cast<long>(x.extent(0)));
  GateVector const pn =
      detail::first_rows(prototype_norms, "proteus::dna::prototype_norm", static_cast<long>(prototypes.extent(0)));
  row_norms(space, x, xn, "proteus::dna::token_norm");
  row_norms(space, prototypes, pn, "proteus::dna::prototype_norm");
  return CosineParts{dots, xn, pn};
}

void dna_similarity(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& prototypes, GateMatrix const& sim,
                    TokenVector& token_norms, GateVector& prototype_norms) {
  CosineParts const parts = dna_similarity_parts(space, x, prototypes, sim, token_norms, prototype_norms);
  detail::for_each_element(
      space, "proteus::dna::cosine", static_cast<long>(sim.extent(0)), static_cast<long>(sim.extent(1)),
      KOKKOS_LAMBDA(long t, long g) { sim(t, g) = parts(t, g); });
}

void hybrid_route(ExecSpace const& space, Config const& cfg, GateMatrix const& router_probs, GateMatrix const& sim,
                  DnaState const& dna, Routing const& out) {
  GateVector usage_bias;
  hybrid_route(space, cfg, router_probs, sim, dna, out, usage_bias);
}

namespace {
// bias[g] = softmax_g(-usage): the same for every token, so computed once per call (G work items,
// each with the G-term normaliser; G is small).
void usage_softmax(ExecSpace const& space, GateVector const& usage, GateVector const& bias) {
  int const gates = static_cast<int>(usage.extent(0));
  Kokkos::parallel_for(
      "proteus::dna::usage_bias", RangePolicy(space, 0, gates), KOKKOS_LAMBDA(int g) {
        float umin = usage(0);
        for (int k = 1; k < gates; ++k) umin = usage(k) < umin ? usage(k) : umin;
        float z = 0.0f;
        for (int k = 0; k < gates; ++k) z += km::exp(-(usage(k) - umin));
        bias(g) = km::exp(-(usage(g) - umin)) / z;
      });
}

// The sum and the largest of non-negative numbers.
struct SumAndMax {
  float sum, max;
  KOKKOS_INLINE_FUNCTION void clear() { sum = max = 0.0f; }
  KOKKOS_INLINE_FUNCTION void add(float v) {
    sum += v;
    max = v > max ? v : max;
  }
  KOKKOS_INLINE_FUNCTION void merge(SumAndMax const& o) {
    sum += o.sum;
    max = o.max > max ? o.max : max;
  }
};

// The router's probabilities of one token, p(g), read from a matrix of them (router.hpp's
// router_row forms them from the logits instead).
struct ProbabilityRow {
  GateMatrix probs;
  long t;
  KOKKOS_INLINE_FUNCTION float operator()(int g) const { return probs(t, g); }
  KOKKOS_INLINE_FUNCTION void keep(int, float) const {}
};
template <class Lanes>
KOKKOS_INLINE_FUNCTION ProbabilityRow router_row(GateMatrix const& probs, Lanes const&, long t) {
  return ProbabilityRow{probs, t};
}

// hybrid_route with the router's probabilities (or logits) and sim(t, g), the similarity of token t
// to gate g (a matrix of cosines, or their parts): each similarity is read once, into gate_probs,
// where the softmax over the gates then finds it.
template <class Router, class Similarity>
void route_tokens(ExecSpace const& space, Config const& cfg, Router const& router, long tokens, int gates,
                  Similarity const& sim, DnaState const& dna, Routing const& out, GateVector& usage_bias) {
  bool const use_dna = cfg.dna_enable;
  float const theta = cfg.dna_threshold, lambda = cfg.dna_blend, tau = cfg.dna_temperature;
  float const boost = use_dna ? cfg.dna_usage_boost : 0.0f;
  auto probs = out.gate_probs;
  auto salience = out.salience;
  auto beta_out = out.beta;
  auto importance = out.importance;
  auto confidence = dna.confidence;
  GateVector const bias = detail::first_rows(usage_bias, "proteus::dna::usage_bias", boost > 0.0f ? gates : 0);
  if (boost > 0.0f) usage_softmax(space, dna.usage, bias);
  // Per token: three reductions over its gates and one exp per gate (from logits, the router's
  // softmax adds two reductions and two exps per gate); exp((sim - smax) / tau) waits in gate_probs
  // until the blend overwrites it.
  detail::for_each_token(
      space, "proteus::dna::hybrid_route", tokens,
      KOKKOS_LAMBDA(detail::TokenMember const& member, long t) {
        auto const lanes = Kokkos::ThreadVectorRange(member, gates);
        auto const router_probs = router_row(router, lanes, t);
        auto once = [&](float s, float b, float gmax) {
          Kokkos::single(Kokkos::PerThread(member), [&]() {
            salience(t) = s;
            beta_out(t) = b;
            importance(t) = (1.0f - b) * gmax + b * s;
          });
        };
        if (!use_dna) {
          float gmax = 0.0f;
          Kokkos::parallel_reduce(
              lanes,
              [&](int g, float& v) {
                float const p = router_probs(g);
                router_probs.keep(g, p);
                probs(t, g) = p;
                v = p > v ? p : v;
              },
              Kokkos::Max<float>(gmax));
          once(0.0f, 0.0f, gmax);
          return;
        }
        float smax = 0.0f;
        Kokkos::parallel_reduce(
            lanes,
            [&](int g, float& v) {
              float const c = sim(t, g);
              probs(t, g) = c;
              v = c > v ? c : v;
            },
            Kokkos::Max<float>(smax));
        // proto_probs = softmax(sim / tau) * (confidence + 1e-6), renormalised by wz: the softmax's
        // normaliser pz and the weighted sum in one pass.
        // Two sums over MergeLanes: each added up in the order of a Kokkos::Sum over the same lanes.
        detail::LaneSum<2> z;
        Kokkos::parallel_reduce(
            lanes,
            [&](int g, detail::LaneSum<2>& s) {
              float const e = km::exp((probs(t, g) - smax) / tau);
              probs(t, g) = e;
              s.v[0] += e;
              s.v[1] += e * (confidence(g) + 1e-6f);
            },
            detail::MergeLanes<detail::LaneSum<2>>(z));
        float const pz = z.v[0];
        float wz = z.v[1] / pz;
        wz = wz > 1e-6f ? wz : 1e-6f;
        float const proto_scale = 1.0f / (pz * wz);
        float b = (smax - theta) / (1.0f - theta > 1e-6f ? 1.0f - theta : 1e-6f);
        b = b < 0.0f ? 0.0f : (b > 1.0f ? 1.0f : b);
        float const blend = lambda * b;
        // The blend, its total and its largest entry; max(p / total) = max(p) / total exactly
        // (rounded division by a positive number keeps the order), so no pass after the division.
        SumAndMax blended;
        Kokkos::parallel_reduce(
            lanes,
            [&](int g, SumAndMax& s) {
              float const proto = probs(t, g) * (confidence(g) + 1e-6f) * proto_scale;
              float const rp = router_probs(g);
              router_probs.keep(g, rp);
              float p = (1.0f - blend) * rp + blend * proto;
              if (boost > 0.0f) p += bias(g) * (1.0f - b) * boost;
              p = p > 0.0f ? p : 0.0f;
              probs(t, g) = p;
              s.add(p);
            },
            detail::MergeLanes<SumAndMax>(blended));
        float const total = blended.sum > 1e-12f ? blended.sum : 1e-12f;
        Kokkos::parallel_for(lanes, [&](int g) { probs(t, g) /= total; });
        float const gmax = blended.max / total;
        once(smax, b, gmax);
      },
      0, detail::lanes_for(gates));
}

}  // namespace

void hybrid_route(ExecSpace const& space, Config const& cfg, GateMatrix const& router_probs, GateMatrix const& sim,
                  DnaState const& dna, Routing const& out, GateVector& usage_bias) {
  route_tokens(space, cfg, router_probs, static_cast<long>(router_probs.extent(0)),
               static_cast<int>(router_probs.extent(1)), sim, dna, out, usage_bias);
}

void hybrid_route(ExecSpace const& space, Config const& cfg, GateMatrix const& router_probs, CosineParts const& sim,
                  DnaState const& dna, Routing const& out, GateVector& usage_bias) {
  route_tokens(space, cfg, router_probs, static_cast<long>(router_probs.extent(0)),
               static_cast<int>(router_probs.extent(1)), sim, dna, out, usage_bias);
}

void hybrid_route(ExecSpace const& space, Config const& cfg, RouterLogits const& router, CosineParts const& sim,
                  DnaState const& dna, Routing const& out, GateVector& usage_bias) {
  route_tokens(space, cfg, router, static_cast<long>(router.logits.extent(0)),
               static_cast<int>(router.logits.extent(1)), sim, dna, out, usage_bias);
}

void hybrid_route(ExecSpace const& space, Config const& cfg, RouterLogits const& router, DnaState const& dna,
                  Routing const& out, GateVector& usage_bias) {
  require(!cfg.dna_enable, "hybrid_route", "without a similarity, DNA must be off (dna_enable false)");
  route_tokens(space, cfg, router, static_cast<long>(router.logits.extent(0)),
               static_cast<int>(router.logits.extent(1)), GateMatrix(), dna, out, usage_bias);
}

void hybrid_route_backward(ExecSpace const& space, Config const& cfg, Routing const& routing,
                           GateMatrix const& dgate_probs, GateMatrix const& drouter_probs) {
  int const gates = static_cast<int>(dgate_probs.extent(1));
  bool const use_dna = cfg.dna_enable;
  float const lambda = cfg.dna_blend, boost = cfg.dna_usage_boost;
  auto gp = routing.gate_probs;
  auto beta = routing.beta;
  Kokkos::parallel_for(
      "proteus::dna::hybrid_route_backward", RangePolicy(space, 0, dgate_probs.extent(0)),
      KOKKOS_LAMBDA(long t) {
        if (!use_dna) {
          for (int g = 0; g < gates; ++g) drouter_probs(t, g) = dgate_probs(t, g);
          return;
        }
        float dot = 0.0f;
        for (int g = 0; g < gates; ++g) dot += gp(t, g) * dgate_probs(t, g);
        float const scale = (1.0f - lambda * beta(t)) / (1.0f + (boost > 0.0f ? boost * (1.0f - beta(t)) : 0.0f));
        for (int g = 0; g < gates; ++g) drouter_probs(t, g) = scale * (dgate_probs(t, g) - dot);
      });
}

void dna_statistics(ExecSpace const& space, TokenMatrix const& x, GateMatrix const& gate_probs,
                    DnaStatistics const& stats) {
  DnaStatisticsScratch scratch;
  dna_statistics(space, x, gate_probs, stats, scratch);
}

void dna_statistics(ExecSpace const& space, TokenMatrix const& x, GateMatrix const& gate_probs,
                    DnaStatistics const& stats, DnaStatisticsScratch& scratch) {
  long const n = static_cast<long>(gate_probs.extent(0));
  int const gates = static_cast<int>(gate_probs.extent(1));
  int const embed = static_cast<int>(x.extent(1));
  GateByEmbed const sums = detail::first_rows(scratch.sums, "proteus::dna::weighted_sums", gates, embed);
  detail::gemm(space, "T", "N", 1.0f, gate_probs, x, 0.0f, sums);
  GateVector const ones = detail::first_rows(scratch.ones, "proteus::dna::ones", n);
  Kokkos::deep_copy(space, ones, 1.0f);
  GateVector const count = detail::first_rows(scratch.count, "proteus::dna::count_f", gates);
  Kokkos::deep_copy(space, count, 0.0f);  // gemv with beta 0 is not trusted to ignore what count held
  detail::gemv(space, "T", 1.0f, gate_probs, ones, 0.0f, count);
  auto c = stats.count;
  auto s = stats.sums;
  detail::for_each_element(
      space, "proteus::dna::statistics", gates, embed, KOKKOS_LAMBDA(long g, long j) {
        s(g, j) = sums(g, j);
        if (j == 0) c(g) = count(g);
      });
}

int dna_ema_update(ExecSpace const& space, float decay, DnaStatistics const& stats, DnaState const& dna) {
  Kokkos::View<long, MemSpace> const updated("proteus::dna::updated");
  dna_ema_update(space, decay, stats, dna, updated);
  long n = 0;
  Kokkos::deep_copy(space, n, updated);
  space.fence();
  return static_cast<int>(n);
}

void dna_ema_update(ExecSpace const& space, float decay, DnaStatistics const& stats, DnaState const& dna,
                    Kokkos::View<long, MemSpace> const& updated) {
  int const gates = static_cast<int>(dna.prototypes.extent(0));
  int const embed = static_cast<int>(dna.prototypes.extent(1));
  auto p = dna.prototypes;
  auto usage = dna.usage;
  auto conf = dna.confidence;
  auto c = stats.count;
  auto s = stats.sums;
  double const d = decay;
  detail::for_each_element(
      space, "proteus::dna::ema_update", gates, embed, KOKKOS_LAMBDA(long g, long j) {
        if (dna_gate_hit(c(g))) p(g, j) = static_cast<float>(dna_ema_prototype(d, p(g, j), s(g, j), c(g)));
      });
  Kokkos::parallel_reduce(
      "proteus::dna::ema_usage", RangePolicy(space, 0, gates),
      KOKKOS_LAMBDA(int g, long& n) {
        usage(g) = static_cast<float>(dna_ema_usage(d, usage(g), c(g)));
        conf(g) = static_cast<float>(dna_ema_confidence(d, conf(g), c(g)));
        n += dna_gate_hit(c(g)) ? 1 : 0;
      },
      updated);
}

}  // namespace proteus
