// Small checked wrappers over the HDF5 C API used by the checkpoint code and tools: every
// failure becomes a proteus::Error naming the file and the dataset.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace proteus::detail {

class H5File {
 public:
  // mode: "r" (read only), "w" (create, truncate), "a" (read/write, create if missing).
  H5File(std::string path, char const* mode);
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
  // Reads a dataset, checking its rank, dims (0 = any) and type class; returns the dims read.
  template <class T>
  std::vector<hsize_t> read(std::string const& name, std::vector<hsize_t> const& expected_dims,
                            std::vector<T>& out) const;

  void attr(std::string const& object, std::string const& name, long long value) const;
  void attr(std::string const& object, std::string const& name, double value) const;
  void attr(std::string const& object, std::string const& name, std::string const& value) const;
  long long attr_int(std::string const& object, std::string const& name) const;
  double attr_double(std::string const& object, std::string const& name) const;
  std::string attr_string(std::string const& object, std::string const& name) const;

  std::string where(std::string const& name) const { return path_ + ":" + name; }

 private:
  std::string path_;
  hid_t id_ = -1;
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
