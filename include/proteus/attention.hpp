// Stage 6b: attention of every active (head, row) over its shortlist, as team kernels: one team
// per block of up to 32 active rows of one head; on GPUs a row's candidates are dealt out to a
// vector of lanes (8 for head widths up to 32), each with its own online-softmax state in
// registers, merged at the end of the row. Rows close together walk the union of their local
// windows in step, through tiles of keys and values staged in team scratch (the same lane of
// every row reads the same key at once); rows far apart (sparse heads, dropped tokens) walk their
// own windows from global memory. Then the row's anchors and DNA candidates are gathered.
// Softmax is online (running max and sum), so memory stays O(1) per row, never O(T^2). Dense
// causal attention is the same kernels with a window that covers the whole prefix.
#pragma once

#include <cstdint>

#include "proteus/shortlist.hpp"
#include "proteus/types.hpp"

namespace proteus::detail {

// Active rows grouped by head: rows are sorted by (batch*head, token). Only kept tokens have a
// query: query row q of the call belongs to token row query_source(q) of x (b*T + t), in
// (batch, token) order, so that with every token kept query row = b*span + t - row_begin.
struct ActiveRows {
  IndexVector head;          // [rows] batch*heads index
  Kokkos::View<long*, MemSpace> token;   // [rows] row index within the call (0..T-1)
  Kokkos::View<long*, MemSpace> query;   // [rows] query (and context) row
  Kokkos::View<long*, MemSpace> head_start;  // [B*H + 1] first row of each head
  Kokkos::View<long*, MemSpace> block_start; // [blocks + 1] first row of each block
  Kokkos::View<long*, MemSpace> query_source;  // [queries] token row of x of each query row
  Kokkos::View<long*, MemSpace> query_of;      // [B*span] query row of (b, row_begin + i), -1 if dropped
  long rows = 0;
  long blocks = 0;
  long queries = 0;
  long slots = 0;  // batch * heads * (row_end - row_begin): the (head, token) pairs rows come from
};

inline constexpr int attention_block_rows = 32;

// Allocations behind an ActiveRows, kept by callers that compact again and again (the module
// keeps one set): each view of the result is the first part of one of these.
struct ActiveRowsBuffers {
  IndexVector head;
  Kokkos::View<long*, MemSpace> token, query, block_start, query_source, query_of;
  Kokkos::View<long*, MemSpace> sizes;                // [B*H + 2] queries, then head_start: read in one copy
  Kokkos::View<std::uint32_t*, MemSpace> head_words;  // a head's active tokens, 32 to a word
  Kokkos::View<long*, MemSpace> word_rows;            // the rows before each word
  Kokkos::View<long*, HostSpace> sizes_host;
};

// Rows of tokens t in [row_begin, row_end) with head_mask(b*T + t, h) set, or with keep set
// for every head when all_heads is true (the dense path ignores the head mask).
// The views of the result live in `buffers` (grown when too short) until the next call with them.
ActiveRows compact_active_rows(ExecSpace const& space, MaskMatrix const& head_mask,
                               MaskVector const& keep, bool all_heads, int batch, long tokens,
                               long row_begin, long row_end, ActiveRowsBuffers& buffers);
// The same with buffers of its own.
ActiveRows compact_active_rows(ExecSpace const& space, MaskMatrix const& head_mask,
                               MaskVector const& keep, bool all_heads, int batch, long tokens,
                               long row_begin, long row_end);

// Attention of the active rows in `rows`: context row rows.query(r), columns h*D.., gets
// softmax(q k^T / sqrt(D)) (v + value_bias) over the shortlist of `plan`, where q [queries x E]
// holds the query rows (after bias and RoPE) and kv [B*T x 2E] every token's keys | values; head
// h at columns h*D within each part. A row's softmax weights sum to one, so value_bias [E] (may
// be empty: none) is added once to the context instead of to every value. Entries of ctx of
// inactive (token, head) pairs are left untouched (callers zero ctx first).
// candidate_count [rows] (optional, may be empty) receives each row's count.
// Softmax statistics of each active row r: max(r) = m, the largest of its scores q.k / sqrt(D)
// (the query scaled first), and sum(r) = l, the sum of exp(score - m) over its candidates. attend
// writes them when the views are not empty; attend_backward reads them.
struct RowSoftmax {
  TokenVector max, sum;
};
void attend(ExecSpace const& space, ShortlistPlan const& plan, TokenMatrix const& q, TokenMatrix const& kv,
            TokenVector const& value_bias, ActiveRows const& rows, CandidateLists const& dna_lists, int heads,
            TokenMatrix const& ctx, Kokkos::View<int*, MemSpace> const& candidate_count,
            RowSoftmax const& softmax = {});
// The same with keys and values stored in BF16 by head (Config::kv_bf16, Bf16HeadRows
// [B*H x T x 2D]): each is widened to float as it is read, so the result is attend's on kv rounded
// to BF16, bit for bit.
void attend(ExecSpace const& space, ShortlistPlan const& plan, TokenMatrix const& q, Bf16HeadRows const& kv,
            TokenVector const& value_bias, ActiveRows const& rows, CandidateLists const& dna_lists, int heads,
            TokenMatrix const& ctx, Kokkos::View<int*, MemSpace> const& candidate_count,
            RowSoftmax const& softmax = {});

// Router gradient (Config::router_gradient): the context of each active row, ctx(query, head h's
// columns), times weight(b*T + token, h).
void scale_active_heads(ExecSpace const& space, ActiveRows const& rows, GateMatrix const& weight,
                        TokenMatrix const& ctx, long tokens);

// What attend produced for the rows, as its backward reads it: the context (value bias included),
// the value bias and the rows' softmax statistics.
struct AttendedRows {
  TokenMatrix ctx;
  TokenVector value_bias;
  RowSoftmax softmax;
};

// Backward of attend for the same rows, plan and lists (what forward chose is a constant here).
// dctx [queries x E] is the gradient of the context rows (columns of inactive heads are not
// read); q, kv as in attend, `out` what attend wrote for them. Writes dq [queries x E] (zero in
// inactive heads' columns) and dkv [B*T x 2E] (gradients of every token's keys | values, zero
// where no row used them; the value bias' gradient, sum_i dO_i over the active rows, equals the
// column sums of dV, since each row's softmax weights sum to one). dkv may be kv itself (the keys
// pass reads a key's own row only, before it writes it) for head widths 8-64. Deterministic: every
// output element is summed by one thread in a fixed order (rows walk their candidates; keys walk
// the rows that chose them), no atomics. `buffers` holds the scratch (D_i of each row, the anchor
// groups, the inverted DNA lists) between calls: each is the first part of one of these, grown
// when too short.
struct BackwardBuffers {
  TokenVector row_dot;
  Kokkos::View<long*, MemSpace> residue_start, residue_rows, dna_start, dna_block;
  IndexVector residue_slot;
  TokenMatrix clamp_part;
};
void attend_backward(ExecSpace const& space, ShortlistPlan const& plan, TokenMatrix const& q, TokenMatrix const& kv,
                     ActiveRows const& rows, CandidateLists const& dna_lists, int heads, AttendedRows const& out,
                     TokenMatrix const& dctx, TokenMatrix const& dq, TokenMatrix const& dkv, BackwardBuffers& buffers);
// Whether attend_backward may write dkv over kv for this head width.
bool backward_in_place(int head_dim);

}  // namespace proteus::detail
