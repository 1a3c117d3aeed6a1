// Small checked wrappers over the HDF5 C API used by the checkpoint code and tools: every
// failure becomes a proteus::Error naming the file and the dataset.
#pragma once

#include <hdf5.h>
#include <mpi.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace proteus::detail {

class H5File {
 public:
  // mode: "r" (read only) or "w" (a new file). A "w" file is built in memory (HDF5's core driver)
  // and written out whole by close() with checked writes: a full disk or a file-size limit is an
  // error of close() naming the file, and HDF5 never sees a failed write (after one, a file's
  // state in the library is broken: closing it again at MPI_Finalize crashed the process). Only
  // close() writes: a "w" file destroyed unclosed (an exception on the way) leaves nothing.
  H5File(std::string path, char const* mode);
  // `source` (an HDF5 file, or a new one when it does not exist) loaded into memory for changes;
  // close() writes the changed file to `destination` (e.g. a temporary name), `source` untouched.
  static H5File edit(std::string const& source, std::string destination);
  ~H5File();
  H5File(H5File const&) = delete;
  H5File& operator=(H5File const&) = delete;
  hid_t id() const { return id_; }
  std::string const& path() const { return path_; }
  void close();

  bool exists(std::string const& name) const;
  void create_group(std::string const& name) const;

  // Datasets of float32, float64, int64 or int32 with the given dims (row-major).
  template <class T>
  void write(std::string const& name, std::vector<hsize_t> const& dims, T const* data) const;
  // Creates the dataset and writes rows [first_row, first_row + rows) of it from `data`
  // (rows = 0: this caller writes nothing), with the given transfer property list.
  template <class T>
  void write_rows(std::string const& name, std::vector<hsize_t> const& dims, hsize_t first_row, hsize_t rows,
                  T const* data, hid_t transfer) const;
  // Reads a dataset, checking its rank, dims (0 = any) and type class; returns the dims read.
  template <class T>
  std::vector<hsize_t> read(std::string const& name, std::vector<hsize_t> const& expected_dims,
                            std::vector<T>& out) const;
  // Dims and type class of a dataset ("dataset not found" when missing).
  struct Shape {
    std::vector<hsize_t> dims;
    bool floating = false;
  };
  Shape shape(std::string const& name) const;
  // Rows [first, first + rows) of the first dimension into out (row-major, converted to T).
  template <class T>
  void read_rows(std::string const& name, hsize_t first, hsize_t rows, T* out) const;
  // Appends one row of shape row_dims to the extendible dataset [n x row_dims...] `name`, which
  // is created (chunked by rows, unlimited first dimension) when missing. Returns the new n.
  template <class T>
  hsize_t append_row(std::string const& name, std::vector<hsize_t> const& row_dims, T const* data) const;

  void attr(std::string const& object, std::string const& name, long long value) const;
  void attr(std::string const& object, std::string const& name, double value) const;
  void attr(std::string const& object, std::string const& name, std::string const& value) const;
  long long attr_int(std::string const& object, std::string const& name) const;
  double attr_double(std::string const& object, std::string const& name) const;
  std::string attr_string(std::string const& object, std::string const& name) const;

  std::string where(std::string const& name) const { return path_ + ":" + name; }

  // Creates (truncates) `path` on every rank of comm through MPI-IO (parallel HDF5 builds only).
  static H5File create_collective(std::string path, MPI_Comm comm);
  H5File(H5File&& other) noexcept
      : path_(std::move(other.path_)), image_(std::move(other.image_)), id_(other.id_) {
    other.id_ = -1;
  }

 private:
  H5File(std::string path, hid_t id) : path_(std::move(path)), id_(id) {}
  std::string path_;   // named in messages
  std::string image_;  // in-memory files: where close() writes them
  hid_t id_ = -1;
};

// True when the HDF5 library was built with MPI-IO (collective writes possible).
bool hdf5_is_parallel();

// One new HDF5 file written together by every rank of comm. Shared objects (attributes, groups,
// datasets that every rank holds identically) come from rank 0's values; per-rank datasets are
// the ranks' rows concatenated in rank order. Collective mode (parallel HDF5 builds): every rank
// opens the file through MPI-IO, creates every object (collective metadata) and writes its own
// rows with a collective transfer. Otherwise rank 0 alone opens the file and the rows are
// gathered to it. Both modes write the same file. Every call is collective over comm.
//
// Failures: in gathered mode (and on one rank) the file is built in memory on rank 0 (H5File "w"),
// so a full disk is an ordinary error that every rank agrees on. In collective mode a failed HDF5
// call cannot be agreed on (the other ranks may be waiting inside HDF5 for this one) nor undone
// (the library's state of the file is broken), so the rank that sees it prints the message and
// ends the job with MPI_Abort; close() ends with a barrier, so that no rank commits the file
// before every rank closed it. A sizing file (no path) writes nothing and counts the bytes the
// datasets would take, for a free-space check before the real write.
class H5RankFile {
 public:
  H5RankFile(std::string const& path, MPI_Comm comm, bool collective);
  explicit H5RankFile(MPI_Comm comm);  // sizing only
  // Bytes of the file written so far, over-estimated: the datasets' data, 1/32 more for chunk
  // checksums, 4 KiB per dataset (header, chunk index) and 64 KiB (superblock, groups, attributes).
  // A checkpoint of 268 kB of data with 22 datasets takes 339 kB; the estimate is 432 kB.
  long long estimated_bytes() const { return bytes_ + bytes_ / 32 + 4096 * datasets_ + (64LL << 10); }
  ~H5RankFile();
  H5RankFile(H5RankFile const&) = delete;
  H5RankFile& operator=(H5RankFile const&) = delete;
  bool collective() const { return collective_; }

  void create_group(std::string const& name) const;
  template <class V>
  void attr(std::string const& object, std::string const& name, V const& value) const {
    if (file_) guarded([&] { file_->attr(object, name, value); });
  }
  // A dataset every rank holds identically (rank 0's copy is written).
  template <class T>
  void write(std::string const& name, std::vector<hsize_t> const& dims, T const* data) const;
  // `rows` rows of shape row_dims from this rank; the dataset is [sum of rows, row_dims...].
  template <class T>
  void write_rows(std::string const& name, std::vector<hsize_t> const& row_dims, long rows, T const* data) const;
  void close();

 private:
  void guarded(std::function<void()> const& call) const;  // MPI_Abort on a failed collective call
  MPI_Comm comm_;
  int rank_ = 0, ranks_ = 1;
  bool collective_ = false, sizing_ = false;
  mutable long long bytes_ = 0, datasets_ = 0;  // of every dataset written so far
  std::optional<H5File> file_;  // open on every rank (collective) or on rank 0 only
  hid_t transfer_ = H5P_DEFAULT;
};

// Turns HDF5's own error printing off for the lifetime of the object (errors become Errors).
class H5Quiet {
 public:
  H5Quiet();
  ~H5Quiet();

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

}  // namespace proteus::detail
