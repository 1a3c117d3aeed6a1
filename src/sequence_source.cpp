// Sequence sources: synthetic tokens generated where they are consumed, and HDF5 hyperslabs.
#include "proteus/sequence_source.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "proteus/detail/element_range.hpp"
#include "proteus/detail/hdf5_io.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/error.hpp"
#include "proteus/random.hpp"

namespace proteus {

SyntheticSource::SyntheticSource(SequenceSpec const& spec, int embed_dim, DnaState const& dna)
    : tokens_(spec.tokens), embed_dim_(embed_dim), seed_(spec.seed), similarity_(spec.needle_similarity) {
  needle_positions_ = spec.needle_positions;
  if (needle_positions_.empty())
    for (int k = 0; k < spec.needles; ++k)  // spread evenly, off the chunk grid's round numbers
      needle_positions_.push_back((2 * k + 1) * tokens_ / (2 * spec.needles) + 7 * k % std::max(1L, tokens_ / 1000));
  std::sort(needle_positions_.begin(), needle_positions_.end());
  needle_positions_.erase(std::unique(needle_positions_.begin(), needle_positions_.end()), needle_positions_.end());
  int const n = static_cast<int>(needle_positions_.size());
  needle_pos_ = Kokkos::View<Position*, MemSpace>("proteus::source::needle_pos", n);
  needle_dir_ = Kokkos::View<float**, Kokkos::LayoutRight, MemSpace>("proteus::source::needle_dir", n, embed_dim);
  auto hp = Kokkos::create_mirror_view(needle_pos_);
  auto hd = Kokkos::create_mirror_view(needle_dir_);
  auto protos = Kokkos::create_mirror_view_and_copy(HostSpace(), dna.prototypes);
  int const gates = static_cast<int>(protos.extent(0));
  for (int k = 0; k < n; ++k) {
    hp(k) = needle_positions_[k];
    double norm = 0.0;
    for (int e = 0; e < embed_dim; ++e) norm += double(protos(k % gates, e)) * protos(k % gates, e);
    norm = std::sqrt(std::max(norm, 1e-30));
    for (int e = 0; e < embed_dim; ++e) hd(k, e) = static_cast<float>(protos(k % gates, e) / norm);
  }
  Kokkos::deep_copy(needle_pos_, hp);
  Kokkos::deep_copy(needle_dir_, hd);
}

void SyntheticSource::generate(ExecSpace const& space, Position first, Kokkos::View<Position*, MemSpace> const& pos,
                               TokenMatrix const& out) const {
  int const e = embed_dim_;
  std::uint64_t const key = detail::stream_key(seed_, detail::stream_tokens);
  int const needles = static_cast<int>(needle_pos_.extent(0));
  bool const listed = pos.extent(0) > 0;
  auto npos = needle_pos_;
  auto ndir = needle_dir_;
  float const along = static_cast<float>(similarity_ * std::sqrt(static_cast<double>(e)));
  float const spread = static_cast<float>(std::sqrt(std::max(0.0, 1.0 - similarity_ * similarity_)));
  // A token's entries on neighbouring lanes: a warp writes a contiguous piece of the row.
  detail::for_each_token(
      space, "proteus::source::synthetic", static_cast<long>(out.extent(0)),
      KOKKOS_LAMBDA(detail::TokenMember const& member, long i) {
        Position const t = listed ? pos(i) : first + i;
        // Binary search for a needle at t (needles are few and sorted).
        int lo = 0, hi = needles;
        while (lo < hi) {
          int const mid = (lo + hi) / 2;
          if (npos(mid) < t)
            lo = mid + 1;
          else
            hi = mid;
        }
        bool const needle = lo < needles && npos(lo) == t;
        std::uint64_t const row = static_cast<std::uint64_t>(t) * e;
        auto entry = [&](int j, float noise) { out(i, j) = needle ? along * ndir(lo, j) + spread * noise : noise; };
        if (e % 2 == 0) {  // a lane per pair of entries, both from one hash
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, e / 2), [&](int p) {
            detail::NormalPair const z = detail::standard_normal_pair_at(key, row / 2 + p);
            entry(2 * p, z.even);
            entry(2 * p + 1, z.odd);
          });
        } else {
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, e),
                               [&](int j) { entry(j, detail::standard_normal_float_at(key, row + j)); });
        }
      });
}

void SyntheticSource::read(ExecSpace const& space, long begin, TokenMatrix const& out) const {
  generate(space, begin, {}, out);
}

void SyntheticSource::read_rows(ExecSpace const& space, std::vector<Position> const& positions,
                                TokenMatrix const& out) const {
  Kokkos::View<Position*, MemSpace> pos("proteus::source::positions", positions.size());
  auto h = Kokkos::create_mirror_view(pos);
  std::copy(positions.begin(), positions.end(), h.data());
  Kokkos::deep_copy(space, pos, h);
  generate(space, 0, pos, out);
}

// ---- HDF5 ------------------------------------------------------------------------------------

Hdf5Source::Hdf5Source(std::string const& file, std::string const& dataset, std::vector<Position> needles)
    : dataset_(dataset), needles_(std::move(needles)) {
  require(std::filesystem::exists(file), file, "sequence file does not exist");
  file_ = std::make_unique<detail::H5File>(file, "r");
  detail::H5File::Shape const shape = file_->shape(dataset);
  std::string const where = file_->where(dataset);
  require(shape.dims.size() == 2, where,
          "expected a 2-D dataset [tokens x embed], got rank " + std::to_string(shape.dims.size()));
  require(shape.floating, where, "expected floating-point data");
  tokens_ = static_cast<long>(shape.dims[0]);
  embed_dim_ = static_cast<int>(shape.dims[1]);
  std::sort(needles_.begin(), needles_.end());
  for (Position p : needles_)
    require(p >= 0 && p < tokens_, where, "needle position " + std::to_string(p) + " is outside its " +
                                              std::to_string(tokens_) + " tokens");
}

Hdf5Source::~Hdf5Source() = default;

void Hdf5Source::read_host(long begin, long rows, float* out) const {
  file_->read_rows(dataset_, static_cast<hsize_t>(begin), static_cast<hsize_t>(rows), out);
}

void Hdf5Source::read(ExecSpace const& space, long begin, TokenMatrix const& out) const {
  auto host = Kokkos::create_mirror_view(out);
  read_host(begin, static_cast<long>(out.extent(0)), host.data());
  Kokkos::deep_copy(space, out, host);
}

void Hdf5Source::read_rows(ExecSpace const& space, std::vector<Position> const& positions,
                           TokenMatrix const& out) const {
  if (positions.empty()) return;
  // Runs of consecutive positions are read with one hyperslab each. (A single selection OR-ed
  // from thousands of rows costs HDF5 time quadratic in the rows: 11.5 s for 16k rows, measured.)
  auto host = Kokkos::create_mirror_view(out);
  for (size_t i = 0; i < positions.size();) {
    size_t j = i + 1;
    while (j < positions.size() && positions[j] == positions[j - 1] + 1) ++j;
    read_host(positions[i], static_cast<long>(j - i), host.data() + i * embed_dim_);
    i = j;
  }
  Kokkos::deep_copy(space, out, host);
}

void SequenceSource::read_host(long, long, float*) const {
  fail("sequence source", "this source does not read into host memory");
}

std::unique_ptr<SequenceSource> make_source(SequenceSpec const& spec, int embed_dim, DnaState const& dna,
                                            std::string const& base_dir) {
  if (spec.source == "hdf5") {
    std::filesystem::path file = spec.file;
    if (file.is_relative() && !base_dir.empty()) file = std::filesystem::path(base_dir) / file;
    std::vector<Position> needles(spec.needle_positions.begin(), spec.needle_positions.end());
    auto src = std::make_unique<Hdf5Source>(file.string(), spec.dataset, needles);
    require(src->embed_dim() == embed_dim, file.string() + ":" + spec.dataset,
            "has width " + std::to_string(src->embed_dim()) + " but [model] embed_dim = " + std::to_string(embed_dim));
    return src;
  }
  return std::make_unique<SyntheticSource>(spec, embed_dim, dna);
}

}  // namespace proteus
