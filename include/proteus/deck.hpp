// Input decks: INI-style sections ([model], [sequence], [pipeline], [checkpoint], [output]) read
// with CLI11's config parser and checked against one registry of keys, which also writes
// docs/input_deck.md. Errors name the file, line and key. The deck sits on top: only the
// conductor (pipeline.cpp) and the drivers see a RunDeck; each stage gets its own spec or values.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "proteus/config.hpp"
#include "proteus/sequence_source.hpp"

namespace proteus {

struct PipelineSpec {
  long chunk_tokens = 16384;
  double chunk_keep_ratio = 0.05;    // token sparsity inside a chunk
  double top_p = 0.9;                // nucleus over a chunk's kept scores
  long chunk_budget = 4096;          // at most this many candidates per chunk
  long buffer_tokens = 4096;         // size of the global buffer
  bool buffer_pass = true;           // attention over the global buffer
  double buffer_keep_ratio = 0.5;    // token sparsity of the buffer pass
  bool second_pass = false;          // every token: its local window + the earlier buffer
  long second_pass_window = 256;
  double memory_limit_gb = 0.0;      // 0: what the machine reports as available
};

struct CheckpointSpec {
  std::string directory = "checkpoints";
  long interval_chunks = 0;          // 0: only at the end
  int keep_last = 2;
  bool at_end = true;
  bool collective_io = true;         // parallel HDF5 builds: every rank writes its rows (MPI-IO)
  bool dna_dump = false;             // time series of DNA snapshots (one per checkpoint interval)
  std::string weights;               // load weights/DNA from this HDF5 file
};

struct OutputSpec {
  std::string directory = "proteus_out";
  bool write_outputs = false;        // buffer (and second-pass) outputs to HDF5
  double progress_seconds = 10.0;    // interval of plain progress lines (non-terminal)
  double warn_after_seconds = 3600;  // warn after the first chunk when all of them would take longer
};

struct RunDeck {
  std::string path;  // where it was read from
  std::set<std::string> given;  // "section.key" of every key the deck or --set gave
  std::map<std::string, std::string> origin;  // "section.key" -> "file:line" or "--set ..." that gave it
  Config model;
  SequenceSpec sequence;
  PipelineSpec pipeline;
  CheckpointSpec checkpoint;
  OutputSpec output;

  RunDeck();
  // Checks that need several keys at once, the rank count and the sequence length (which an
  // HDF5 source knows only once opened), e.g. a chunk larger than a rank's slice.
  void validate(int ranks, long tokens) const;
  // The [model] section alone (part of validate): errors name the line of the key that caused them.
  void validate_model() const;
};

// Reads `path`, then applies "section.key=value" overrides in order.
RunDeck read_deck(std::string const& path, std::vector<std::string> const& overrides = {});
// A deck from its text (e.g. the resolved deck a checkpoint stores); errors name `origin`.
RunDeck read_deck_text(std::string const& text, std::string const& origin);
// "[section] key (value in a against value in b)" for every key whose values differ, except the
// "section.key" names in `ignore`.
std::vector<std::string> deck_differences(RunDeck const& a, RunDeck const& b, std::set<std::string> const& ignore);
// The resolved deck as INI text (printed at start, stored with results).
std::string deck_to_ini(RunDeck const& deck);
// Markdown reference of every key: type, default, unit, meaning.
std::string deck_reference_markdown();

}  // namespace proteus
