// Every knob of the Proteus forward pass (../shared/SPEC.md) with its default. Values of 0 marked
// "auto" are derived from the shape by Config::resolved(). Units: tokens unless said otherwise.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace proteus {

enum class AlphaMode { automatic, linear, subquad, fixed };

struct Config {
  // ---- shape -------------------------------------------------------------------------------
  int embed_dim = 0;    // E
  int num_heads = 0;    // H, head width D = E / H
  int num_gates = 0;    // G; auto: 2 * max(H, heads_active_max)
  bool bias = true;     // biases of the Q/K/V and output projections
  bool batch_first = true;
  std::uint64_t seed = 0;  // weights and DNA are a pure function of the seed

  // ---- router and DNA (stages 1, 2) -----------------------------------------------------------
  bool dna_enable = true;
  bool dna_update = true;          // EMA update after each forward
  float dna_decay = 0.97f;         // EMA decay d
  float dna_threshold = 0.25f;     // theta: similarity where blending starts
  float dna_blend = 0.6f;          // lambda: weight of the prototype distribution at beta = 1
  float dna_temperature = 0.2f;    // tau of softmax(sim / tau)
  float dna_usage_boost = 0.0f;    // bias toward rarely used gates
  float dna_init_scale = 0.02f;    // prototypes start as N(0, 1) * scale

  // ---- token importance and sparsity (stage 3) ------------------------------------------------
  bool token_sparse = false;
  float token_keep_ratio = 1.0f;      // r0
  int token_keep_ref = 2048;          // r_lin(T) = r0 sqrt(ref / T)
  float token_keep_min_ratio = 0.2f;  // lower clamp of r_lin
  int token_keep_min = 0;             // keep at least this many tokens
  int token_keep_guard = 4;           // the first tokens are always kept
  float token_keep_threshold = 0.0f;  // also keep every token with importance >= this (if > 0)

  // ---- gates to heads, head sparsity (stage 4) ------------------------------------------------
  std::vector<int> gate_to_head;  // empty: floor(g * H / G)
  int heads_active_min = 2;
  int heads_active_max = 0;       // auto: H
  float head_curve = 0.25f;       // exponent of the K(T) ramp
  int seq_low = 0;                // auto: max(64, D)
  int seq_high = 0;               // auto: 4 * seq_low
  float router_top_p = 0.9f;      // nucleus rule on head probabilities (0 = off)
  // true: each token's own head probabilities (causal); false: their mean over the whole call
  // (upstream's rule, which lets later tokens change earlier tokens' head count).
  bool nucleus_per_token = true;
  int linear_head_k = 2;          // heads per token at alpha = 1
  // Opt-in differentiable routing: each active head's context is scaled by its head probability
  // renormalised over the token's active heads (top-k gating of mixtures of experts), so that the
  // router receives a gradient; the selection itself stays a constant (straight-through).
  // Changes the forward's outputs. Off: upstream's behaviour (routing only selects).
  bool router_gradient = false;

  // ---- sparse-head controller (head_controller.hpp) ------------------------------------------
  // Every head_cooldown forwards, the mean busiest-head density moves [heads_active_min,
  // heads_active_max] by one toward head_target_density +- head_tolerance, and linear_L with it.
  bool head_controller = false;
  float head_target_density = 0.28f;
  float head_tolerance = 0.03f;
  int head_cooldown = 4;
  int head_controller_min = 0;  // global bounds of the range; 0: 1 and num_heads
  int head_controller_max = 0;

  // ---- projections and RoPE (stage 5) ---------------------------------------------------------
  bool rope = true;
  double rope_base = 10000.0;
  // Q/K/V and output projection GEMMs on TF32 tensor cores (FP32 sums). CUDA with cuBLAS only;
  // routing and DNA GEMMs stay FP32, so the same tokens, heads and candidates are chosen.
  bool tf32_projections = false;
  // The same GEMMs with their inputs rounded to BF16 (FP32 products and sums, FP32 outputs): BF16
  // tensor cores in CUDA builds calling cuBLAS, the same rounding and an FP32 GEMM elsewhere.
  // Excludes tf32_projections; routing and DNA stay FP32 as above. A training forward's backward
  // differentiates the FP32 projections (as with tf32_projections).
  bool bf16_projections = false;
  // Keys and values stored in BF16 for the attention (half the bytes it reads, and no FP32 K|V
  // of every token kept through the call): projected, biased and rotated (RoPE) in FP32 a query
  // block of rows at a time, then rounded; scores and sums stay FP32, and routing, DNA and
  // selection never read K|V, so the same tokens, heads and candidates are chosen. A training
  // forward's backward recomputes K|V in FP32 (as with tf32_projections).
  bool kv_bf16 = false;

  // ---- alpha slider and shortlist (stage 6) ---------------------------------------------------
  AlphaMode mode = AlphaMode::automatic;
  float alpha = 0.0f;              // used when mode == fixed
  int switch_ctx = 20000;          // auto mode reaches alpha = 1 here
  float dense_alpha_cutoff = 0.0f; // alpha <= cutoff: exact dense attention
  // Dense when the fraction of heads active per token (K / H) >= this and alpha < 0.95; 0 = off.
  // (Upstream measures the busiest head's row fraction, which depends on later tokens.)
  float force_dense_threshold = 0.6f;
  int linear_L = 512;              // L_lin: candidates per query at alpha = 1
  int L_min = 64;
  int L_max = 0;                   // 0: no cap (our law); 512 reproduces upstream
  int window = 512;                // base of the local window
  int anchor_stride = 256;
  bool use_local = true;
  bool use_anchors = true;
  bool use_dna_candidates = false;
  float frac_local = 0.6f;         // split of L at alpha = 1 over the enabled pieces
  float frac_anchor = 0.3f;
  float frac_dna = 0.1f;
  // Query rows (over the batch) whose Q and attention context are held at a time; only kept
  // tokens have query rows (token sparsity), while K and V are held for every token. Smaller: less
  // memory, more kernel launches. Results do not depend on it.
  int query_block_rows = 131072;
  // With kv_bf16: rows of K|V projected in FP32 at a time before they are biased, rotated and
  // rounded to BF16. Smaller: less memory (the stage holds 2E floats a row), more launches and
  // time (on an H200 at 1M tokens, 8,192 rows took 12% longer; the stage is not read back from
  // the L2 cache at any size). Results do not depend on it.
  int kv_stage_rows = 131072;

  // Derived values filled in; throws proteus::Error naming the field on bad values.
  Config resolved() const;
  int head_dim() const { return num_heads > 0 ? embed_dim / num_heads : 0; }
};

// "automatic" | "linear" | "subquad" | "fixed"
AlphaMode parse_alpha_mode(std::string const& text);
std::string to_string(AlphaMode mode);

}  // namespace proteus
