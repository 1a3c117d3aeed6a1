// Stage 2: DNA, one prototype vector per gate, blended with the router (hybrid routing), and the
// EMA update of the prototypes after a forward pass.
#pragma once

#include <string>

#include "proteus/config.hpp"
#include "proteus/router.hpp"
#include "proteus/types.hpp"

namespace proteus {

struct DnaState {
  GateByEmbed prototypes;  // [G x E]
  GateVector usage;        // [G] decayed token mass routed to each gate
  GateVector confidence;   // [G] decayed count of updates of each gate

  static DnaState allocate(int num_gates, int embed_dim, std::string const& label = "dna");
  // prototypes = N(0, 1) * scale from the counter-based generator; usage = confidence = 0.
  void initialise(ExecSpace const& space, std::uint64_t seed, float scale) const;
  DnaState clone(ExecSpace const& space) const;
};

// Per-token routing outputs of stage 2 and 3.
struct Routing {
  GateMatrix gate_probs;   // [N x G] blended distribution over gates
  TokenVector salience;    // [N] s_max = max_g cos(x, P_g) (0 without DNA)
  TokenVector beta;        // [N] blend strength
  TokenVector importance;  // [N] (1 - beta) max_g gate_probs + beta s_max

  static Routing allocate(int tokens, int num_gates);
};

// sim [N x G] = cos(x[t], P[g]) with norms clamped at 1e-6.
void dna_similarity(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& prototypes,
                    GateMatrix const& sim);
// The same with the norms in buffers that grow when too short (callers that route again and again
// keep them: no allocation per call).
void dna_similarity(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& prototypes,
                    GateMatrix const& sim, TokenVector& token_norms, GateVector& prototype_norms);

// The cosine similarity before its division: cos(x[t], P[g]) = dots(t, g) / (token_norms(t)
// prototype_norms(g)), the same rounding as dna_similarity's. hybrid_route divides as it reads
// each entry, which saves a pass over the [N x G] matrix.
struct CosineParts {
  GateColumns dots;            // [N x G] x P^T
  TokenVector token_norms;     // [N] clamped at 1e-6
  GateVector prototype_norms;  // [G] clamped at 1e-6
  KOKKOS_INLINE_FUNCTION float operator()(long t, long g) const {
    return dots(t, g) / (token_norms(t) * prototype_norms(g));
  }
};
// dots = x P^T into `dots` and the norms into buffers that grow when too short.
CosineParts dna_similarity_parts(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& prototypes,
                                 GateMatrix const& dots, TokenVector& token_norms, GateVector& prototype_norms);
// The same around dots = x P^T computed elsewhere (the module's one GEMM for router and DNA): the
// norms only.
CosineParts dna_cosine_parts(ExecSpace const& space, TokenMatrix const& x, GateByEmbed const& prototypes,
                             GateColumns const& dots, TokenVector& token_norms, GateVector& prototype_norms);

// Blends router_probs with the prototype distribution (SPEC stage 2, steps 2-4) and computes
// salience, beta and importance. Without DNA (cfg.dna_enable false) gate_probs = router_probs.
void hybrid_route(ExecSpace const& space, Config const& cfg, GateMatrix const& router_probs,
                  GateMatrix const& sim, DnaState const& dna, Routing const& out);
// The same with the usage term's per-gate softmax in a buffer that grows when too short.
void hybrid_route(ExecSpace const& space, Config const& cfg, GateMatrix const& router_probs,
                  GateMatrix const& sim, DnaState const& dna, Routing const& out, GateVector& usage_bias);
// The same from the similarity's parts: the above after dna_similarity within float rounding (to
// the bit on the CPU; a GPU compiler may contract the two kernels' products differently).
void hybrid_route(ExecSpace const& space, Config const& cfg, GateMatrix const& router_probs, CosineParts const& sim,
                  DnaState const& dna, Routing const& out, GateVector& usage_bias);

// The router's logits in place of its probabilities (the module's way, router.hpp's RouterLogits):
// hybrid_route takes each token's softmax as it reads them, with router_probabilities' code.
void hybrid_route(ExecSpace const& space, Config const& cfg, RouterLogits const& router, CosineParts const& sim,
                  DnaState const& dna, Routing const& out, GateVector& usage_bias);
// Without DNA (cfg.dna_enable false): gate_probs = the router's probabilities.
void hybrid_route(ExecSpace const& space, Config const& cfg, RouterLogits const& router, DnaState const& dna,
                  Routing const& out, GateVector& usage_bias);

// Backward of hybrid_route to the router's probabilities, with the blend strength and the
// prototype distribution held constant (the DNA similarity passes no gradient: straight-through):
// gate_probs = u / total, u = (1 - lambda beta) router_probs + (terms without the router), so
// drouter_probs(t, g) = (1 - lambda beta_t) / total_t (dgate_probs(t, g) - sum_g' gate_probs dgate_probs),
// total_t = 1 + usage_boost (1 - beta_t). Without DNA, drouter_probs = dgate_probs.
void hybrid_route_backward(ExecSpace const& space, Config const& cfg, Routing const& routing,
                           GateMatrix const& dgate_probs, GateMatrix const& drouter_probs);

// Sufficient statistics of one EMA step: count[g] = sum_t p[t,g], sums[g,:] = sum_t p[t,g] x[t].
struct DnaStatistics {
  Kokkos::View<double*, MemSpace> count;                       // [G]
  Kokkos::View<double**, Kokkos::LayoutRight, MemSpace> sums;  // [G x E]
  static DnaStatistics allocate(int num_gates, int embed_dim);
};
void dna_statistics(ExecSpace const& space, TokenMatrix const& x, GateMatrix const& gate_probs,
                    DnaStatistics const& stats);
// dna_statistics' temporaries, kept by a caller that updates the DNA on every call (the module):
// sized on first use, then no device allocation per call.
struct DnaStatisticsScratch {
  GateByEmbed sums;        // [G x E] the float GEMM's result
  GateVector ones, count;  // [N] ones, [G] routed mass
};
void dna_statistics(ExecSpace const& space, TokenMatrix const& x, GateMatrix const& gate_probs,
                    DnaStatistics const& stats, DnaStatisticsScratch& scratch);
// The EMA rule of one gate, one step: the device update below and the host chain of the chunk
// stage (dna_chain.hpp) both call these, so the two cannot drift apart. A gate is updated when
// the routed mass `count` exceeds 1e-6; usage and confidence decay on every step.
KOKKOS_INLINE_FUNCTION bool dna_gate_hit(double count) { return count > 1e-6; }
KOKKOS_INLINE_FUNCTION double dna_ema_prototype(double decay, double prototype, double sum, double count) {
  return decay * prototype + (1.0 - decay) * sum / count;
}
KOKKOS_INLINE_FUNCTION double dna_ema_usage(double decay, double usage, double count) {
  return decay * usage + (dna_gate_hit(count) ? (1.0 - decay) * count : 0.0);
}
KOKKOS_INLINE_FUNCTION double dna_ema_confidence(double decay, double confidence, double count) {
  return decay * confidence + (dna_gate_hit(count) ? 1.0 - decay : 0.0);
}

// P[g] = d P[g] + (1-d) sums[g]/count[g] for count > 1e-6; usage, confidence decay and grow.
// Returns the number of gates updated.
int dna_ema_update(ExecSpace const& space, float decay, DnaStatistics const& stats,
                   DnaState const& dna);
// The same, writing the number of gates updated into `updated` on the device (nothing waits).
void dna_ema_update(ExecSpace const& space, float decay, DnaStatistics const& stats, DnaState const& dna,
                    Kokkos::View<long, MemSpace> const& updated);

}  // namespace proteus
