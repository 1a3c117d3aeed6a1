// Where the tokens of a long sequence come from: a synthetic generator (token t is a pure
// function of (seed, t), so any rank makes its own slice on the device) with planted needles, or
// an HDF5 dataset [T x E] of which each rank reads its own hyperslabs. Reads SequenceSpec (the
// deck's [sequence] section), writes token rows into device views.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "proteus/dna.hpp"
#include "proteus/types.hpp"

namespace proteus {

namespace detail {
class H5File;
}

struct SequenceSpec {
  std::string source = "synthetic";  // synthetic | hdf5
  long tokens = 65536;
  std::uint64_t seed = 7;
  std::string file;                  // hdf5: file and dataset [T x E] of float32
  std::string dataset = "embeddings";
  int needles = 8;                   // synthetic: planted tokens close to a DNA prototype
  double needle_similarity = 0.8;    // cosine similarity of a needle to its prototype
  std::vector<long> needle_positions;  // synthetic: empty = spread evenly; hdf5: facts to look for
};

class SequenceSource {
 public:
  virtual ~SequenceSource() = default;
  virtual long tokens() const = 0;
  virtual int embed_dim() const = 0;
  // Rows [begin, begin + out.extent(0)) into out.
  virtual void read(ExecSpace const& space, long begin, TokenMatrix const& out) const = 0;
  // The rows at `positions` (ascending) into out, one row each.
  virtual void read_rows(ExecSpace const& space, std::vector<Position> const& positions,
                         TokenMatrix const& out) const = 0;
  // Positions of planted needles (synthetic source), ascending.
  virtual std::vector<Position> needles() const { return {}; }
  // Sources whose token t is a pure function of t can make any row on any rank's device, so
  // that rows another rank owns need not travel through MPI.
  virtual bool generated() const { return false; }
  // Sources whose tokens live in host memory or files can fill a host buffer from any thread,
  // so that reading the next chunk overlaps the device work on the current one.
  virtual bool host_resident() const { return false; }
  virtual void read_host(long begin, long rows, float* out) const;
};

// Synthetic tokens: x[t] ~ N(0, I_E) from the counter-based generator (entry j of token t is
// standard_normal_float_at(stream_key(seed, stream_tokens), t E + j)); a needle at position p is
// s sqrt(E) u + sqrt(1 - s^2) n, with u the unit prototype of gate (k mod G) of `dna` and n
// noise, so that its cosine similarity to that prototype is about s. Evaluated in float.
class SyntheticSource final : public SequenceSource {
 public:
  SyntheticSource(SequenceSpec const& spec, int embed_dim, DnaState const& dna);
  long tokens() const override { return tokens_; }
  int embed_dim() const override { return embed_dim_; }
  void read(ExecSpace const& space, long begin, TokenMatrix const& out) const override;
  void read_rows(ExecSpace const& space, std::vector<Position> const& positions,
                 TokenMatrix const& out) const override;
  std::vector<Position> needles() const override { return needle_positions_; }
  bool generated() const override { return true; }
  // Fills row i of out with the token at position pos(i), or first + i when pos is empty. (Public:
  // CUDA forbids device lambdas in private member functions.)
  void generate(ExecSpace const& space, Position first, Kokkos::View<Position*, MemSpace> const& pos,
                TokenMatrix const& out) const;

 private:
  long tokens_;
  int embed_dim_;
  std::uint64_t seed_;
  double similarity_;
  std::vector<Position> needle_positions_;
  Kokkos::View<Position*, MemSpace> needle_pos_;        // [needles]
  Kokkos::View<float**, Kokkos::LayoutRight, MemSpace> needle_dir_;  // [needles x E] unit rows
};

// HDF5 dataset of float32 [T x E]; the file is opened read-only by every rank. `needles` are
// positions the user knows to matter (planted facts): the pipeline reports which reach the buffer.
class Hdf5Source final : public SequenceSource {
 public:
  Hdf5Source(std::string const& file, std::string const& dataset, std::vector<Position> needles = {});
  ~Hdf5Source() override;
  long tokens() const override { return tokens_; }
  int embed_dim() const override { return embed_dim_; }
  void read(ExecSpace const& space, long begin, TokenMatrix const& out) const override;
  void read_rows(ExecSpace const& space, std::vector<Position> const& positions,
                 TokenMatrix const& out) const override;
  std::vector<Position> needles() const override { return needles_; }
  bool host_resident() const override { return true; }
  void read_host(long begin, long rows, float* out) const override;

 private:
  std::unique_ptr<detail::H5File> file_;
  std::string dataset_;
  long tokens_ = 0;
  int embed_dim_ = 0;
  std::vector<Position> needles_;
};

// The source `spec` asks for, with tokens of width embed_dim; a relative file name is taken
// relative to `base_dir` (the deck's directory). The synthetic source plants its needles along
// the prototypes of `dna`.
std::unique_ptr<SequenceSource> make_source(SequenceSpec const& spec, int embed_dim, DnaState const& dna,
                                            std::string const& base_dir);

}  // namespace proteus
