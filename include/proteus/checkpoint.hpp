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
#include "proteus/chunk_grid.hpp"
#include "proteus/chunk_pipeline.hpp"
#include "proteus/multihead_attention.hpp"

namespace proteus {

inline constexpr int checkpoint_format_version = 1;

struct CheckpointContent {
  std::string deck_text;                   // the resolved input deck, stored for the record
  CausalGeneticMultiheadAttention const* model = nullptr;  // config, weights, gate map, DNA at run start
  ChunkGrid grid;                          // the sequence's chunk grid
  bool collective_io = true;               // every rank writes its rows (parallel HDF5 builds)
  DnaState const* final_dna = nullptr;     // after the chunk stage (end of run), or null
  RankState const* state = nullptr;        // this rank's state (collective: every rank passes its own)
  GlobalBuffer const* buffer = nullptr;    // end of run, or null
  std::vector<Position> const* needles = nullptr;  // needles of the source, or null
};

// Collective over comm. Writes `path` atomically (a temporary name, renamed on rank 0).
void write_checkpoint(std::string const& path, MPI_Comm comm, CheckpointContent const& content);

// The model alone (the /config attributes, /weights, /dna and /gate_to_head of a checkpoint),
// written atomically by the calling process (no MPI): a weights file for `[checkpoint] weights`,
// load_model and the Python extension's load_hdf5.
void write_model_file(std::string const& path, CausalGeneticMultiheadAttention const& model);

// This rank's run state from a checkpoint written with the same rank count, chunk grid and model
// shape (`model` is the resolved config of the run that resumes).
RankState read_rank_state(std::string const& path, MPI_Comm comm, Config const& model, ChunkGrid const& grid);

// The resolved deck text of the run that wrote the checkpoint (the "/" attribute "deck").
std::string read_checkpoint_deck(std::string const& path);

// Weights and DNA (prototypes, usage, confidence) from a checkpoint or weights file; shapes are
// checked against the module's config. `dna_group` is "/dna" (run start) or "/dna_final".
void load_model(ExecSpace const& space, std::string const& path, CausalGeneticMultiheadAttention& model,
                std::string const& dna_group = "/dna");

// Appends one DNA snapshot (prototypes, usage, confidence, tokens seen) to an extendible
// time series in `path` (created if missing). Rank 0 only.
void append_dna_snapshot(std::string const& path, DnaState const& dna, long tokens_seen);

// Outputs [n x E] of the tokens at `positions` (ascending), written atomically: the buffer pass's
// (rank 0) and each rank's second-pass outputs. `description` is stored with the dataset.
void write_outputs(std::string const& path, std::vector<Position> const& positions, std::vector<float> const& outputs,
                   int embed_dim, std::string const& description);

// Keeps the newest `keep` files of the form prefix*.h5 in dir.
void prune_checkpoints(std::string const& dir, std::string const& prefix, int keep);

}  // namespace proteus
