// HDF5 checkpoints (schema: docs/hdf5_schema.md, format_version attribute): the config as
// attributes, weights, DNA, gate_to_head, per-rank run state (so a run resumes at its next
// chunk), statistics and the global buffer. Files are written under a temporary name and renamed
// into place only when complete; a failed write leaves the previous checkpoint untouched.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <mpi.h>

#include "proteus/buffer_exchange.hpp"
#include "proteus/chunk_pipeline.hpp"
#include "proteus/deck.hpp"
#include "proteus/multihead_attention.hpp"

namespace proteus {

inline constexpr int checkpoint_format_version = 1;

struct CheckpointContent {
  RunDeck const* deck = nullptr;
  CausalGeneticMultiheadAttention const* model = nullptr;  // weights, gate map, DNA at run start
  DnaState const* final_dna = nullptr;     // after the chunk stage (end of run), or null
  RankState const* state = nullptr;        // this rank's state (collective: every rank passes its own)
  GlobalBuffer const* buffer = nullptr;    // end of run, or null
  std::vector<Position> const* needles = nullptr;  // planted needles (synthetic source), or null
  long tokens = 0;
  long chunks_total = 0;
};

// Collective over comm. Writes `path` atomically (path + ".tmp", then rename on rank 0).
void write_checkpoint(std::string const& path, MPI_Comm comm, CheckpointContent const& content);

// This rank's run state from a checkpoint written with the same rank count and deck shape.
RankState read_rank_state(std::string const& path, MPI_Comm comm, RunDeck const& deck);

// Weights and DNA (prototypes, usage, confidence) from a checkpoint or weights file; shapes are
// checked against the module's config. `dna_group` is "/dna" (run start) or "/dna_final".
void load_model(std::string const& path, CausalGeneticMultiheadAttention& model,
                std::string const& dna_group = "/dna");

// Appends one DNA snapshot (prototypes, usage, confidence, tokens seen) to an extendible
// time series in `path` (created if missing). Rank 0 only.
void append_dna_snapshot(std::string const& path, DnaState const& dna, long tokens_seen);

// The buffer pass outputs [S x E] with their positions, written atomically. Rank 0 only.
void write_buffer_outputs(std::string const& path, GlobalBuffer const& buffer, std::vector<float> const& outputs,
                          int embed_dim);

// Keeps the newest `keep` files of the form prefix*.h5 in dir.
void prune_checkpoints(std::string const& dir, std::string const& prefix, int keep);

}  // namespace proteus
