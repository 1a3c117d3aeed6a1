// Stages 3 and 4: token importance -> token keep mask (sort-based top-n per batch row), gate
// probabilities -> head probabilities -> head count K -> per-token head mask.
#include "proteus/gating.hpp"

#include <algorithm>
#include <cmath>

#include "proteus/detail/element_range.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/workspace.hpp"
#include "proteus/detail/sort_keys.hpp"
#include "proteus/error.hpp"

namespace proteus {

double token_keep_ratio(Config const& cfg, long tokens, double alpha) {
  double const r0 = cfg.token_keep_ratio;
  double const lo = std::min<double>(r0, cfg.token_keep_min_ratio);
  double r_lin = r0 * std::sqrt(static_cast<double>(cfg.token_keep_ref) / std::max(1L, tokens));
  r_lin = std::clamp(r_lin, lo, r0);
  return (1.0 - alpha) * r0 + alpha * r_lin;
}

long tokens_to_keep(Config const& cfg, long tokens, double alpha) {
  double const r = token_keep_ratio(cfg, tokens, alpha);
  long n = round_half_even(r * static_cast<double>(tokens));
  n = std::max<long>({n, cfg.token_keep_min, cfg.token_keep_guard});
  return std::min(n, tokens);
}

long select_tokens(ExecSpace const& space, Config const& cfg, TokenVector const& importance,
                   int batch, long tokens, double alpha, MaskVector const& keep) {
  TokenKeyBuffers buffers;
  return select_tokens(space, cfg, importance, batch, tokens, alpha, keep, buffers);
}

namespace {
bool keeps_every_token(Config const& cfg, long tokens, double alpha) {
  return !cfg.token_sparse || (token_keep_ratio(cfg, tokens, alpha) >= 0.999 && cfg.token_keep_threshold <= 0.0f);
}
}  // namespace

long mark_kept_tokens(ExecSpace const& space, Config const& cfg, TokenVector const& importance, int batch,
                      long tokens, double alpha, MaskVector const& keep, TokenKeyBuffers& buffers) {
  buffers.ranked = false;
  if (keeps_every_token(cfg, tokens, alpha)) {
    Kokkos::deep_copy(space, keep, std::uint8_t(1));
    return batch * tokens;
  }
  long const n = tokens_to_keep(cfg, tokens, alpha);
  long const guard = std::min<long>(cfg.token_keep_guard, tokens);
  float const threshold = cfg.token_keep_threshold;
  Kokkos::View<std::uint64_t*, MemSpace> const keys =
      detail::first_rows(buffers.keys, "proteus::gating::token_keys", tokens);
  for (int b = 0; b < batch; ++b) {
    long const offset = b * tokens;
    Kokkos::parallel_for(
        "proteus::gating::token_keys", RangePolicy(space, 0, tokens),
        KOKKOS_LAMBDA(long t) { keys(t) = detail::descending_score_key(importance(offset + t), t); });
    detail::sort(space, keys, buffers.sort_scratch);
    Kokkos::parallel_for(
        "proteus::gating::mark_kept", RangePolicy(space, 0, tokens),
        KOKKOS_LAMBDA(long i) {
          long const t = static_cast<long>(detail::key_position(keys(i)));
          bool const top = i < n;
          bool const over = threshold > 0.0f && importance(offset + t) >= threshold;
          keep(offset + t) = top || over || t < guard ? 1 : 0;  // every token once: no fill first
        });
  }
  buffers.ranked = batch == 1;
  return batch * (threshold > 0.0f ? tokens : std::min(tokens, n + guard));
}

namespace {
// The kept tokens of `keep` counted into a host value (waits) or a device view (does not).
template <class Result>
void count_kept_into(ExecSpace const& space, MaskVector const& keep, Result&& count) {
  Kokkos::parallel_reduce(
      "proteus::gating::count_kept", RangePolicy(space, 0, keep.extent(0)),
      KOKKOS_LAMBDA(long i, long& s) { s += keep(i); }, count);
}
}  // namespace

void count_kept_tokens(ExecSpace const& space, MaskVector const& keep, Kokkos::View<long, MemSpace> const& count) {
  count_kept_into(space, keep, count);
}

long select_tokens(ExecSpace const& space, Config const& cfg, TokenVector const& importance,
                   int batch, long tokens, double alpha, MaskVector const& keep, TokenKeyBuffers& buffers) {
  long const at_most = mark_kept_tokens(space, cfg, importance, batch, tokens, alpha, keep, buffers);
  if (keeps_every_token(cfg, tokens, alpha)) return at_most;  // exact: nothing to count
  long kept = 0;
  count_kept_into(space, keep, kept);
  return kept;
}

HeadGates HeadGates::from(std::vector<int> const& gate_to_head, int heads) {
  int const gates = static_cast<int>(gate_to_head.size());
  HeadGates hg{IndexVector("proteus::gating::head_first_gate", heads + 1),
               IndexVector("proteus::gating::head_gates", gates)};
  auto first = Kokkos::create_mirror_view(hg.first);
  auto list = Kokkos::create_mirror_view(hg.gates);
  for (int h = 0; h <= heads; ++h) first(h) = 0;
  for (int h : gate_to_head) {
    require(h >= 0 && h < heads, "gate_to_head", "entry " + std::to_string(h) + " is not a head");
    ++first(h + 1);
  }
  for (int h = 0; h < heads; ++h) first(h + 1) += first(h);
  std::vector<int> next(first.data(), first.data() + heads);
  for (int g = 0; g < gates; ++g) list(next[gate_to_head[g]]++) = g;  // ascending within a head
  Kokkos::deep_copy(hg.first, first);
  Kokkos::deep_copy(hg.gates, list);
  return hg;
}

void head_probabilities(ExecSpace const& space, GateMatrix const& gate_probs, HeadGates const& head_gates,
                        GateMatrix const& head_probs) {
  int const heads = static_cast<int>(head_probs.extent(1));
  require(static_cast<int>(head_gates.first.extent(0)) == heads + 1, "head_probs",
          "has " + std::to_string(heads) + " heads, the gate lists " + std::to_string(head_gates.first.extent(0) - 1));
  auto const first = head_gates.first;
  auto const gates = head_gates.gates;
  detail::for_each_token(
      space, "proteus::gating::head_probs", static_cast<long>(gate_probs.extent(0)),
      KOKKOS_LAMBDA(detail::TokenMember const& member, long t) {
        // Lane h sums its own gates in gate order (the order of a serial loop over all gates).
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, heads), [&](int h) {
          float s = 0.0f;
          for (int i = first(h); i < first(h + 1); ++i) s += gate_probs(t, gates(i));
          head_probs(t, h) = s;
        });
      },
      0, detail::lanes_for(static_cast<int>(gate_probs.extent(1))));
}

int heads_for_length(Config const& cfg, long tokens) {
  int const kmax = cfg.heads_active_max, kmin = cfg.heads_active_min;
  if (tokens <= cfg.seq_low) return kmax;
  if (tokens >= cfg.seq_high) return kmin;
  double const x = static_cast<double>(tokens - cfg.seq_low) / (cfg.seq_high - cfg.seq_low);
  int const k = static_cast<int>(std::floor(kmax - std::pow(x, cfg.head_curve) * (kmax - kmin) + 1e-6));
  return std::clamp(k, kmin, kmax);
}

int nucleus_head_count(std::vector<double> const& mean_head_probs, double top_p) {
  std::vector<double> p = mean_head_probs;
  std::sort(p.begin(), p.end(), std::greater<double>());
  double total = 0.0;
  for (double v : p) total += v;
  double cum = 0.0;
  int below = 0;
  for (double v : p) {
    cum += v;
    if (cum < top_p * total) ++below;
  }
  return std::min<int>(below + 1, static_cast<int>(p.size()));
}

HeadCount choose_head_count(ExecSpace const& space, Config const& cfg, long tokens, double alpha,
                            GateMatrix const& head_probs) {
  HeadCount hc;
  hc.by_length = heads_for_length(cfg, tokens);
  if (cfg.router_top_p > 0.0f && !cfg.nucleus_per_token) {
    int const heads = static_cast<int>(head_probs.extent(1));
    GateVector ones("proteus::gating::ones", head_probs.extent(0));
    Kokkos::deep_copy(space, ones, 1.0f);
    GateVector sums("proteus::gating::head_mass", heads);
    detail::gemv(space, "T", 1.0f, head_probs, ones, 0.0f, sums);
    auto host = Kokkos::create_mirror_view_and_copy(HostSpace(), sums);
    std::vector<double> mean(heads);
    for (int h = 0; h < heads; ++h) mean[h] = host(h) / static_cast<double>(head_probs.extent(0));
    hc.nucleus = nucleus_head_count(mean, cfg.router_top_p);
  }
  hc.k = mixed_head_count(hc.by_length, cfg.heads_active_min, hc.nucleus, cfg.linear_head_k, alpha);
  hc.adaptive = hc.nucleus > 0 ? std::max(cfg.heads_active_min, std::min(hc.by_length, hc.nucleus))
                               : hc.by_length;
  return hc;
}

void select_heads(ExecSpace const& space, Config const& cfg, GateMatrix const& head_probs,
                  HeadCount const& hc, double alpha, MaskVector const& keep,
                  MaskMatrix const& head_mask) {
  int const heads = static_cast<int>(head_probs.extent(1));
  require(heads <= max_heads, "num_heads", "at most " + std::to_string(max_heads) + " heads are supported");
  bool const per_token = cfg.nucleus_per_token && cfg.router_top_p > 0.0f;
  float const top_p = cfg.router_top_p;
  int const fixed_k = hc.k, by_length = hc.by_length, kmin = cfg.heads_active_min;
  int const linear_k = cfg.linear_head_k;
  detail::for_each_token(
      space, "proteus::gating::select_heads", static_cast<long>(head_probs.extent(0)),
      KOKKOS_LAMBDA(detail::TokenMember const& member, long t) {
        auto const lanes = Kokkos::ThreadVectorRange(member, heads);
        if (keep(t) == 0) {  // a dropped token has no heads: nothing to rank
          Kokkos::parallel_for(lanes, [&](int h) { head_mask(t, h) = 0; });
          return;
        }
        // The token's probabilities read once into scratch: the ranking and the nucleus read
        // them O(H^2) times (the kernel was latency-bound on those reads, RESULTS section 21).
        auto const order = detail::token_scratch(member, heads);
        auto const probs = detail::token_scratch_floats(member, heads);
        Kokkos::parallel_for(lanes, [&](int h) { probs(h) = head_probs(t, h); });
        // rank of head h: the heads before it, higher probability first and ties to the lower
        // index (O(H) per lane; H is small, no sort).
        auto rank_of = [&](int h) {
          float const ph = probs(h);
          int rank = 0;
          for (int o = 0; o < heads; ++o) {
            float const po = probs(o);
            rank += (po > ph || (po == ph && o < h)) ? 1 : 0;
          }
          return rank;
        };
        if (!per_token) {
          Kokkos::parallel_for(lanes, [&](int h) { head_mask(t, h) = rank_of(h) < fixed_k ? 1 : 0; });
          return;
        }
        Kokkos::parallel_for(lanes, [&](int h) { order(rank_of(h)) = h; });  // order(r): head of rank r
        // Nucleus: the ranks whose cumulative mass (inclusive, summed in rank order) stays below
        // p * total; every lane forms the total in head order, as one serial loop would.
        float total = 0.0f;
        for (int h = 0; h < heads; ++h) total += probs(h);
        int below = 0;
        Kokkos::parallel_reduce(
            lanes,
            [&](int r, int& n) {
              float cum = 0.0f;
              for (int i = 0; i <= r; ++i) cum += probs(order(i));
              n += cum < top_p * total ? 1 : 0;
            },
            below);
        int const nucleus = below + 1 < heads ? below + 1 : heads;
        int const k = mixed_head_count(by_length, kmin, nucleus, linear_k, alpha);
        Kokkos::parallel_for(lanes, [&](int r) { head_mask(t, order(r)) = r < k ? 1 : 0; });
      },
      detail::scratch_for(heads, heads));  // a warp per token: a dropped token's warp skips the ranking
}

namespace {
template <class Result>
void count_pairs_into(ExecSpace const& space, MaskMatrix const& head_mask, Result&& pairs) {
  Kokkos::parallel_reduce(
      "proteus::gating::count_heads", RangePolicy(space, 0, head_mask.size()),
      KOKKOS_LAMBDA(long i, long& n) { n += head_mask.data()[i]; }, pairs);
}
}  // namespace

long count_active_pairs(ExecSpace const& space, MaskMatrix const& head_mask) {
  long pairs = 0;
  count_pairs_into(space, head_mask, pairs);
  return pairs;
}

void count_active_pairs(ExecSpace const& space, MaskMatrix const& head_mask, Kokkos::View<long, MemSpace> const& pairs) {
  count_pairs_into(space, head_mask, pairs);
}

void head_weights(ExecSpace const& space, GateMatrix const& head_probs, MaskMatrix const& head_mask,
                  MaskVector const& keep, bool every_head, GateMatrix const& weight, TokenVector const& total) {
  int const heads = static_cast<int>(head_probs.extent(1));
  Kokkos::parallel_for(
      "proteus::gating::head_weights", RangePolicy(space, 0, head_probs.extent(0)),
      KOKKOS_LAMBDA(long t) {
        float s = 0.0f;
        for (int h = 0; h < heads; ++h) s += keep(t) && (every_head || head_mask(t, h)) ? head_probs(t, h) : 0.0f;
        s = s > 1e-12f ? s : 1e-12f;
        for (int h = 0; h < heads; ++h)
          weight(t, h) = keep(t) && (every_head || head_mask(t, h)) ? head_probs(t, h) / s : 0.0f;
        total(t) = s;
      });
}

void head_weights_backward(ExecSpace const& space, GateMatrix const& dweight, GateMatrix const& weight,
                           TokenVector const& total, IndexVector const& gate_to_head, GateMatrix const& dgate_probs) {
  int const heads = static_cast<int>(weight.extent(1));
  int const gates = static_cast<int>(dgate_probs.extent(1));
  Kokkos::parallel_for(
      "proteus::gating::head_weights_backward", RangePolicy(space, 0, weight.extent(0)),
      KOKKOS_LAMBDA(long t) {
        float dot = 0.0f;  // sum over active heads of weight * dweight (inactive heads have weight 0)
        for (int h = 0; h < heads; ++h) dot += weight(t, h) * dweight(t, h);
        for (int g = 0; g < gates; ++g) {
          int const h = gate_to_head(g);
          dgate_probs(t, g) = weight(t, h) > 0.0f ? (dweight(t, h) - dot) / total(t) : 0.0f;
        }
      });
}

double busiest_head_fraction(ExecSpace const& space, MaskMatrix const& head_mask, MaskVector const& keep,
                             bool every_head, int batch) {
  int const heads = static_cast<int>(head_mask.extent(1));
  long const tokens = static_cast<long>(head_mask.extent(0)) / batch;
  long busiest = 0;
  Kokkos::parallel_reduce(
      "proteus::gating::busiest_head", RangePolicy(space, 0, static_cast<long>(batch) * heads),
      KOKKOS_LAMBDA(long item, long& most) {
        long const b = item / heads, h = item % heads;
        long rows = 0;
        for (long t = b * tokens; t < (b + 1) * tokens; ++t) rows += keep(t) && (every_head || head_mask(t, h)) ? 1 : 0;
        most = rows > most ? rows : most;
      },
      Kokkos::Max<long>(busiest));
  return tokens > 0 ? static_cast<double>(busiest) / static_cast<double>(tokens) : 0.0;
}

}  // namespace proteus
