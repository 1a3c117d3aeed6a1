// Sequence sources: synthetic tokens generated where they are consumed, and HDF5 hyperslabs.
#include "proteus/sequence_source.hpp"

#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

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

void SyntheticSource::generate(ExecSpace const& space, Kokkos::View<Position*, MemSpace> const& pos,
                               TokenMatrix const& out) const {
  int const e = embed_dim_;
  std::uint64_t const seed = seed_;
  int const needles = static_cast<int>(needle_pos_.extent(0));
  auto npos = needle_pos_;
  auto ndir = needle_dir_;
  double const s = similarity_;
  double const spread = std::sqrt(std::max(0.0, 1.0 - s * s));
  double const scale = std::sqrt(static_cast<double>(e));
  Kokkos::parallel_for(
      "proteus::source::synthetic", Kokkos::RangePolicy<ExecSpace>(space, 0, out.extent(0)), KOKKOS_LAMBDA(long i) {
        Position const t = pos(i);
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
        for (int j = 0; j < e; ++j) {
          double const noise = standard_normal(seed, stream_tokens, static_cast<std::uint64_t>(t) * e + j);
          out(i, j) = static_cast<float>(needle ? s * scale * ndir(lo, j) + spread * noise : noise);
        }
      });
}

void SyntheticSource::read(ExecSpace const& space, long begin, TokenMatrix const& out) const {
  Kokkos::View<Position*, MemSpace> pos("proteus::source::positions", out.extent(0));
  Kokkos::parallel_for(
      "proteus::source::iota", Kokkos::RangePolicy<ExecSpace>(space, 0, out.extent(0)),
      KOKKOS_LAMBDA(long i) { pos(i) = begin + i; });
  generate(space, pos, out);
}

void SyntheticSource::read_rows(ExecSpace const& space, std::vector<Position> const& positions,
                                TokenMatrix const& out) const {
  Kokkos::View<Position*, MemSpace> pos("proteus::source::positions", positions.size());
  auto h = Kokkos::create_mirror_view(pos);
  std::copy(positions.begin(), positions.end(), h.data());
  Kokkos::deep_copy(space, pos, h);
  generate(space, pos, out);
}

// ---- HDF5 ------------------------------------------------------------------------------------

Hdf5Source::Hdf5Source(std::string const& file, std::string const& dataset) : file_(file), dataset_(dataset) {
  require(std::filesystem::exists(file), file, "sequence file does not exist");
  H5E_auto2_t old_func;
  void* old_data;
  H5Eget_auto2(H5E_DEFAULT, &old_func, &old_data);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  file_id_ = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file_id_ >= 0) dataset_id_ = H5Dopen2(file_id_, dataset.c_str(), H5P_DEFAULT);
  H5Eset_auto2(H5E_DEFAULT, old_func, old_data);
  require(file_id_ >= 0, file, "not a readable HDF5 file");
  require(dataset_id_ >= 0, file + ":" + dataset, "dataset not found");
  hid_t const space = H5Dget_space(dataset_id_);
  int const rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[2] = {0, 0};
  if (rank == 2) H5Sget_simple_extent_dims(space, dims, nullptr);
  H5Sclose(space);
  require(rank == 2, file + ":" + dataset, "expected a 2-D dataset [tokens x embed], got rank " + std::to_string(rank));
  hid_t const type = H5Dget_type(dataset_id_);
  bool const is_float = H5Tget_class(type) == H5T_FLOAT;
  H5Tclose(type);
  require(is_float, file + ":" + dataset, "expected floating-point data");
  tokens_ = static_cast<long>(dims[0]);
  embed_dim_ = static_cast<int>(dims[1]);
}

Hdf5Source::~Hdf5Source() {
  if (dataset_id_ >= 0) H5Dclose(dataset_id_);
  if (file_id_ >= 0) H5Fclose(file_id_);
}

void Hdf5Source::read_host(long begin, long rows, float* out) const {
  hid_t const fs = H5Dget_space(dataset_id_);
  hsize_t const start[2] = {static_cast<hsize_t>(begin), 0};
  hsize_t const count[2] = {static_cast<hsize_t>(rows), static_cast<hsize_t>(embed_dim_)};
  H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, nullptr, count, nullptr);
  hid_t const mem = H5Screate_simple(2, count, nullptr);
  herr_t const rc = H5Dread(dataset_id_, H5T_NATIVE_FLOAT, mem, fs, H5P_DEFAULT, out);
  H5Sclose(mem);
  H5Sclose(fs);
  require(rc >= 0, file_ + ":" + dataset_, "read failed (truncated or corrupt file?)");
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

std::unique_ptr<SequenceSource> make_source(RunDeck const& deck, DnaState const& dna) {
  if (deck.sequence.source == "hdf5") {
    std::filesystem::path file = deck.sequence.file;
    if (file.is_relative() && !deck.path.empty()) file = std::filesystem::path(deck.path).parent_path() / file;
    auto src = std::make_unique<Hdf5Source>(file.string(), deck.sequence.dataset);
    require(src->embed_dim() == deck.model.embed_dim, file.string() + ":" + deck.sequence.dataset,
            "has width " + std::to_string(src->embed_dim()) +
                " but [model] embed_dim = " + std::to_string(deck.model.embed_dim));
    return src;
  }
  return std::make_unique<SyntheticSource>(deck.sequence, deck.model.embed_dim, dna);
}

}  // namespace proteus
