// Checked HDF5 helpers (datasets, attributes) shared by checkpoints, dumps and tools.
#include "proteus/detail/hdf5_io.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <utility>

#include "proteus/detail/atomic_file.hpp"
#include "proteus/detail/collective.hpp"
#include "proteus/error.hpp"

namespace proteus::detail {

namespace {
template <class T>
hid_t native_type() {
  if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
  if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
  if constexpr (std::is_same_v<T, std::int64_t>) return H5T_NATIVE_INT64;
  if constexpr (std::is_same_v<T, std::int32_t>) return H5T_NATIVE_INT32;
}
template <class T>
H5T_class_t type_class() {
  return std::is_floating_point_v<T> ? H5T_FLOAT : H5T_INTEGER;
}
std::string dims_text(std::vector<hsize_t> const& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? " x " : "") + std::to_string(d[i]);
  return s + "]";
}
}  // namespace

H5Quiet::H5Quiet() {
  H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}
H5Quiet::~H5Quiet() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }

namespace {
// File access through HDF5's core driver: the file lives in memory (growing by 1 MiB) and is
// never written behind our back (no backing store).
hid_t in_memory_access() {
  hid_t const access = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(access, std::size_t{1} << 20, 0);
  return access;
}
}  // namespace

H5File::H5File(std::string path, char const* mode) : path_(std::move(path)) {
  H5Quiet quiet;
  std::string const m = mode;
  require(m == "r" || m == "w", path_, "unknown file mode '" + m + "'");
  if (m == "r") {
    require(std::filesystem::exists(path_), path_, "file does not exist");
    id_ = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    require(id_ >= 0, path_, "not a readable HDF5 file (truncated or corrupt?)");
    return;
  }
  hid_t const access = in_memory_access();
  id_ = H5Fcreate(path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access);
  H5Pclose(access);
  require(id_ >= 0, path_, "cannot create the HDF5 file in memory");
  image_ = path_;
}

H5File H5File::edit(std::string const& source, std::string destination) {
  if (!std::filesystem::exists(source)) {
    H5File f(std::move(destination), "w");
    f.path_ = source;
    return f;
  }
  H5Quiet quiet;
  hid_t const access = in_memory_access();
  hid_t const id = H5Fopen(source.c_str(), H5F_ACC_RDWR, access);
  H5Pclose(access);
  require(id >= 0, source, "not a readable HDF5 file (truncated or corrupt?)");
  H5File f(source, id);
  f.image_ = std::move(destination);
  return f;
}

H5File::~H5File() {
  if (id_ >= 0) H5Fclose(id_);  // an unfinished in-memory file is dropped, nothing written
}

void H5File::close() {
  if (id_ < 0) return;
  hid_t const id = std::exchange(id_, -1);
  H5Quiet quiet;
  if (image_.empty()) {
    require(H5Fclose(id) >= 0, path_, "closing the file failed");
    return;
  }
  // The whole file image from memory, then out through checked writes.
  bool ok = H5Fflush(id, H5F_SCOPE_GLOBAL) >= 0;
  ssize_t const size = ok ? H5Fget_file_image(id, nullptr, 0) : -1;
  std::string bytes(size > 0 ? static_cast<std::size_t>(size) : 0, '\0');
  ok = ok && size > 0 && H5Fget_file_image(id, bytes.data(), bytes.size()) == size;
  ok = H5Fclose(id) >= 0 && ok;
  require(ok, path_, "cannot assemble the HDF5 file in memory");
  write_file(image_, bytes);
}

bool H5File::exists(std::string const& name) const {
  H5Quiet quiet;
  // Check each path component, as H5Lexists requires.
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    size_t const next = name.find('/', pos + 1);
    partial = name.substr(0, next);
    if (!partial.empty() && partial != "/" && H5Lexists(id_, partial.c_str(), H5P_DEFAULT) <= 0) return false;
    pos = next;
  }
  return true;
}

void H5File::create_group(std::string const& name) const {
  if (exists(name)) return;
  hid_t const g = H5Gcreate2(id_, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  require(g >= 0, where(name), "cannot create group");
  H5Gclose(g);
}

template <class T>
void H5File::write(std::string const& name, std::vector<hsize_t> const& dims, T const* data) const {
  require(!dims.empty(), where(name), "scalar datasets are not written (use an attribute)");
  write_rows(name, dims, 0, dims[0], data, H5P_DEFAULT);
}

namespace {
// Dataset creation properties of every dataset proteus writes: chunked (chunks of whole rows, at
// most about 16 MiB) with HDF5's Fletcher32 checksum, which every read verifies, so that damaged
// bytes are an error naming the dataset instead of different numbers. Empty datasets stay
// contiguous (chunks cannot be empty).
hid_t checksummed_layout(std::vector<hsize_t> const& dims, size_t element_bytes) {
  hid_t const plist = H5Pcreate(H5P_DATASET_CREATE);
  hsize_t row_bytes = element_bytes;
  for (size_t i = 1; i < dims.size(); ++i) row_bytes *= dims[i];
  if (dims[0] == 0 || row_bytes == 0) return plist;
  std::vector<hsize_t> chunk = dims;
  hsize_t const rows_per_chunk = std::max<hsize_t>(1, (hsize_t{16} << 20) / row_bytes);
  chunk[0] = std::min(dims[0], rows_per_chunk);
  H5Pset_chunk(plist, static_cast<int>(chunk.size()), chunk.data());
  H5Pset_fletcher32(plist);
  return plist;
}
}  // namespace

template <class T>
void H5File::write_rows(std::string const& name, std::vector<hsize_t> const& dims, hsize_t first_row, hsize_t rows,
                        T const* data, hid_t transfer) const {
  hid_t const space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t const layout = checksummed_layout(dims, sizeof(T));
  hid_t const set = H5Dcreate2(id_, name.c_str(), native_type<T>(), space, H5P_DEFAULT, layout, H5P_DEFAULT);
  H5Pclose(layout);
  if (set < 0) H5Sclose(space);
  require(set >= 0, where(name), "cannot create dataset");
  hsize_t n = 1;
  for (hsize_t d : dims) n *= d;
  herr_t rc = 0;
  if (n > 0) {  // an empty dataset has nothing to transfer, on any rank
    std::vector<hsize_t> block = dims, start(dims.size(), 0);
    block[0] = rows, start[0] = first_row;
    hid_t const memory = H5Screate_simple(static_cast<int>(block.size()), block.data(), nullptr);
    if (rows == 0) {
      H5Sselect_none(memory);
      H5Sselect_none(space);
    } else {
      H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, block.data(), nullptr);
    }
    rc = H5Dwrite(set, native_type<T>(), memory, space, transfer, data);
    H5Sclose(memory);
  }
  H5Dclose(set);
  H5Sclose(space);
  require(rc >= 0, where(name), "write failed");
}

template <class T>
std::vector<hsize_t> H5File::read(std::string const& name, std::vector<hsize_t> const& expected,
                                  std::vector<T>& out) const {
  H5Quiet quiet;
  require(exists(name), where(name), "dataset is missing");
  hid_t const set = H5Dopen2(id_, name.c_str(), H5P_DEFAULT);
  require(set >= 0, where(name), "cannot open dataset");
  hid_t const space = H5Dget_space(set);
  int const rank = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(rank > 0 ? rank : 0);
  if (rank > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  H5Sclose(space);
  hid_t const type = H5Dget_type(set);
  H5T_class_t const cls = H5Tget_class(type);
  H5Tclose(type);
  auto close_fail = [&](std::string const& why) {
    H5Dclose(set);
    fail(where(name), why);
  };
  if (cls != type_class<T>())
    close_fail(std::string("wrong type: expected ") + (type_class<T>() == H5T_FLOAT ? "floating point" : "integer") +
               " data");
  bool shape_ok = dims.size() == expected.size();
  for (size_t i = 0; shape_ok && i < dims.size(); ++i) shape_ok = expected[i] == 0 || expected[i] == dims[i];
  if (!shape_ok)
    close_fail("shape " + dims_text(dims) + " does not match the expected " + dims_text(expected) + " (0 = any)");
  hsize_t n = 1;
  for (hsize_t d : dims) n *= d;
  out.resize(n);
  herr_t const rc = n > 0 ? H5Dread(set, native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) : 0;
  H5Dclose(set);
  require(rc >= 0, where(name), "read failed: checksum mismatch or truncated file (damaged data)");
  return dims;
}

H5File::Shape H5File::shape(std::string const& name) const {
  H5Quiet quiet;
  require(exists(name), where(name), "dataset not found");
  hid_t const set = H5Dopen2(id_, name.c_str(), H5P_DEFAULT);
  require(set >= 0, where(name), "cannot open dataset");
  hid_t const space = H5Dget_space(set);
  int const rank = H5Sget_simple_extent_ndims(space);
  Shape out;
  out.dims.resize(rank > 0 ? rank : 0);
  if (rank > 0) H5Sget_simple_extent_dims(space, out.dims.data(), nullptr);
  H5Sclose(space);
  hid_t const type = H5Dget_type(set);
  out.floating = H5Tget_class(type) == H5T_FLOAT;
  H5Tclose(type);
  H5Dclose(set);
  return out;
}

template <class T>
void H5File::read_rows(std::string const& name, hsize_t first, hsize_t rows, T* out) const {
  hid_t const set = H5Dopen2(id_, name.c_str(), H5P_DEFAULT);
  require(set >= 0, where(name), "cannot open dataset");
  hid_t const fs = H5Dget_space(set);
  int const rank = H5Sget_simple_extent_ndims(fs);
  hsize_t dims[H5S_MAX_RANK] = {}, start[H5S_MAX_RANK] = {};
  if (rank > 0) H5Sget_simple_extent_dims(fs, dims, nullptr);
  herr_t rc = -1;
  if (rank > 0 && first + rows <= dims[0]) {
    dims[0] = rows, start[0] = first;
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, nullptr, dims, nullptr);
    hid_t const memory = H5Screate_simple(rank, dims, nullptr);
    rc = H5Dread(set, native_type<T>(), memory, fs, H5P_DEFAULT, out);
    H5Sclose(memory);
  }
  H5Sclose(fs);
  H5Dclose(set);
  require(rc >= 0, where(name), "read failed (truncated or corrupt file?)");
}

template <class T>
hsize_t H5File::append_row(std::string const& name, std::vector<hsize_t> const& row_dims, T const* data) const {
  std::vector<hsize_t> dims = row_dims, start(row_dims.size() + 1, 0);
  dims.insert(dims.begin(), 1);
  hid_t set = -1;
  hsize_t n = 0;
  if (!exists(name)) {
    std::vector<hsize_t> maxd = dims;
    maxd[0] = H5S_UNLIMITED;
    hid_t const space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxd.data());
    hid_t const plist = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(plist, static_cast<int>(dims.size()), dims.data());
    H5Pset_fletcher32(plist);
    set = H5Dcreate2(id_, name.c_str(), native_type<T>(), space, H5P_DEFAULT, plist, H5P_DEFAULT);
    H5Pclose(plist);
    H5Sclose(space);
  } else {
    set = H5Dopen2(id_, name.c_str(), H5P_DEFAULT);
    if (set >= 0) {
      hid_t const space = H5Dget_space(set);
      std::vector<hsize_t> cur(dims.size(), 0);
      bool const same_rank = H5Sget_simple_extent_ndims(space) == static_cast<int>(dims.size());
      if (same_rank) H5Sget_simple_extent_dims(space, cur.data(), nullptr);
      H5Sclose(space);
      cur[0] += 1;
      n = cur[0] - 1;
      if (!same_rank || H5Dset_extent(set, cur.data()) < 0) {
        H5Dclose(set);
        fail(where(name), "cannot extend the dataset by one row of " + dims_text(row_dims));
      }
    }
  }
  require(set >= 0, where(name), "cannot create or open the dataset");
  hid_t const fs = H5Dget_space(set);
  start[0] = n;
  H5Sselect_hyperslab(fs, H5S_SELECT_SET, start.data(), nullptr, dims.data(), nullptr);
  hid_t const memory = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  herr_t const rc = H5Dwrite(set, native_type<T>(), memory, fs, H5P_DEFAULT, data);
  H5Sclose(memory);
  H5Sclose(fs);
  H5Dclose(set);
  require(rc >= 0, where(name), "cannot append a row");
  return n + 1;
}

#define PROTEUS_ROWS(T)                                                                                            \
  template void H5File::write_rows<T>(std::string const&, std::vector<hsize_t> const&, hsize_t, hsize_t, T const*, \
                                      hid_t) const;                                                                \
  template void H5File::read_rows<T>(std::string const&, hsize_t, hsize_t, T*) const;                             \
  template hsize_t H5File::append_row<T>(std::string const&, std::vector<hsize_t> const&, T const*) const;
PROTEUS_ROWS(float)
PROTEUS_ROWS(double)
PROTEUS_ROWS(std::int64_t)
PROTEUS_ROWS(std::int32_t)
#undef PROTEUS_ROWS
template void H5File::write<float>(std::string const&, std::vector<hsize_t> const&, float const*) const;
template void H5File::write<double>(std::string const&, std::vector<hsize_t> const&, double const*) const;
template void H5File::write<std::int64_t>(std::string const&, std::vector<hsize_t> const&, std::int64_t const*) const;
template void H5File::write<std::int32_t>(std::string const&, std::vector<hsize_t> const&, std::int32_t const*) const;
template std::vector<hsize_t> H5File::read<float>(std::string const&, std::vector<hsize_t> const&,
                                                  std::vector<float>&) const;
template std::vector<hsize_t> H5File::read<double>(std::string const&, std::vector<hsize_t> const&,
                                                   std::vector<double>&) const;
template std::vector<hsize_t> H5File::read<std::int64_t>(std::string const&, std::vector<hsize_t> const&,
                                                         std::vector<std::int64_t>&) const;
template std::vector<hsize_t> H5File::read<std::int32_t>(std::string const&, std::vector<hsize_t> const&,
                                                         std::vector<std::int32_t>&) const;

namespace {
void put_attr(hid_t file, std::string const& where, std::string const& object, std::string const& name, hid_t type,
              void const* data) {
  hid_t const space = H5Screate(H5S_SCALAR);
  hid_t const a =
      H5Acreate_by_name(file, object.c_str(), name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  require(a >= 0, where + " @" + name, "cannot create attribute");
  herr_t const rc = H5Awrite(a, type, data);
  H5Aclose(a);
  H5Sclose(space);
  require(rc >= 0, where + " @" + name, "cannot write attribute");
}
hid_t open_attr(hid_t file, std::string const& where, std::string const& object, std::string const& name) {
  H5Quiet quiet;
  require(H5Aexists_by_name(file, object.c_str(), name.c_str(), H5P_DEFAULT) > 0, where + " @" + name,
          "attribute is missing");
  return H5Aopen_by_name(file, object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
}
}  // namespace

void H5File::attr(std::string const& object, std::string const& name, long long value) const {
  put_attr(id_, where(object), object, name, H5T_NATIVE_LLONG, &value);
}
void H5File::attr(std::string const& object, std::string const& name, double value) const {
  put_attr(id_, where(object), object, name, H5T_NATIVE_DOUBLE, &value);
}
void H5File::attr(std::string const& object, std::string const& name, std::string const& value) const {
  hid_t const type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, value.size() + 1);
  H5Tset_strpad(type, H5T_STR_NULLTERM);
  put_attr(id_, where(object), object, name, type, value.c_str());
  H5Tclose(type);
}
long long H5File::attr_int(std::string const& object, std::string const& name) const {
  hid_t const a = open_attr(id_, where(object), object, name);
  long long v = 0;
  herr_t const rc = H5Aread(a, H5T_NATIVE_LLONG, &v);
  H5Aclose(a);
  require(rc >= 0, where(object) + " @" + name, "expected an integer attribute");
  return v;
}
double H5File::attr_double(std::string const& object, std::string const& name) const {
  hid_t const a = open_attr(id_, where(object), object, name);
  double v = 0;
  herr_t const rc = H5Aread(a, H5T_NATIVE_DOUBLE, &v);
  H5Aclose(a);
  require(rc >= 0, where(object) + " @" + name, "expected a numeric attribute");
  return v;
}
std::string H5File::attr_string(std::string const& object, std::string const& name) const {
  hid_t const a = open_attr(id_, where(object), object, name);
  hid_t const type = H5Aget_type(a);
  bool const is_string = H5Tget_class(type) == H5T_STRING;
  std::string v;
  herr_t rc = -1;
  if (is_string && H5Tis_variable_str(type) > 0) {  // e.g. written by h5py
    char* text = nullptr;
    hid_t const memory = H5Tcopy(H5T_C_S1);
    H5Tset_size(memory, H5T_VARIABLE);
    H5Tset_cset(memory, H5Tget_cset(type));
    rc = H5Aread(a, memory, &text);
    if (rc >= 0 && text != nullptr) v = text;
    if (text != nullptr) H5free_memory(text);
    H5Tclose(memory);
  } else if (is_string) {
    v.assign(H5Tget_size(type), '\0');
    rc = H5Aread(a, type, v.data());
  }
  H5Tclose(type);
  H5Aclose(a);
  require(rc >= 0, where(object) + " @" + name, "expected a string attribute");
  v.resize(v.find('\0') == std::string::npos ? v.size() : v.find('\0'));
  return v;
}

bool hdf5_is_parallel() {
#ifdef H5_HAVE_PARALLEL
  return true;
#else
  return false;
#endif
}

H5File H5File::create_collective(std::string path, MPI_Comm comm) {
#ifdef H5_HAVE_PARALLEL
  H5Quiet quiet;
  hid_t const access = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_mpio(access, comm, MPI_INFO_NULL);
  hid_t const id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access);
  H5Pclose(access);
  require(id >= 0, path, "cannot create the HDF5 file (collective, MPI-IO)");
  return H5File(std::move(path), id);
#else
  (void)comm;
  fail(path, "collective HDF5 writes need an HDF5 library built with MPI (parallel HDF5)");
#endif
}

// ---- H5RankFile ---------------------------------------------------------------------------------

namespace {
template <class T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
  if constexpr (std::is_same_v<T, std::int32_t>) return MPI_INT32_T;
}
}  // namespace

H5RankFile::H5RankFile(MPI_Comm comm) : comm_(comm), sizing_(true) {
  MPI_Comm_rank(comm, &rank_);
  MPI_Comm_size(comm, &ranks_);
}

H5RankFile::H5RankFile(std::string const& path, MPI_Comm comm, bool collective) : H5RankFile(comm) {
  sizing_ = false;
  collective_ = collective && ranks_ > 1 && hdf5_is_parallel();
  run_agreed(comm, [&] {
    if (collective_)
      file_.emplace(H5File::create_collective(path, comm));
    else if (rank_ == 0)
      file_.emplace(path, "w");
  });
#ifdef H5_HAVE_PARALLEL
  if (collective_) {
    transfer_ = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(transfer_, H5FD_MPIO_COLLECTIVE);
  }
#endif
}

H5RankFile::~H5RankFile() {
  if (transfer_ != H5P_DEFAULT) H5Pclose(transfer_);
}

void H5RankFile::guarded(std::function<void()> const& call) const {
  if (!collective_) return call();
  try {
    call();
  } catch (std::exception const& e) {
    std::fprintf(stderr,
                 "proteus: error on rank %d: %s; a failed collective HDF5 write cannot be undone, so the job ends "
                 "here (MPI_Abort); files written before are intact\n",
                 rank_, e.what());
    std::fflush(stderr);
    MPI_Abort(comm_, 1);
  }
}

void H5RankFile::create_group(std::string const& name) const {
  if (file_) guarded([&] { file_->create_group(name); });
}

template <class T>
void H5RankFile::write(std::string const& name, std::vector<hsize_t> const& dims, T const* data) const {
  hsize_t n = 1;
  for (hsize_t d : dims) n *= d;
  bytes_ += static_cast<long long>(n * sizeof(T));
  ++datasets_;
  if (!file_) return;
  hsize_t const rows = rank_ == 0 && !dims.empty() ? dims[0] : 0;
  guarded([&] { file_->write_rows(name, dims, 0, rows, data, transfer_); });
}

template <class T>
void H5RankFile::write_rows(std::string const& name, std::vector<hsize_t> const& row_dims, long rows,
                            T const* data) const {
  long row_size = 1;
  for (hsize_t d : row_dims) row_size *= static_cast<long>(d);
  std::vector<long> counts(ranks_);
  MPI_Allgather(&rows, 1, MPI_LONG, counts.data(), 1, MPI_LONG, comm_);
  long first = 0, total = 0;
  for (int r = 0; r < ranks_; ++r) first += r < rank_ ? counts[r] : 0, total += counts[r];
  std::vector<hsize_t> dims = row_dims;
  dims.insert(dims.begin(), static_cast<hsize_t>(total));
  bytes_ += total * row_size * static_cast<long long>(sizeof(T));
  ++datasets_;
  if (collective_) {
    guarded([&] {
      file_->write_rows(name, dims, static_cast<hsize_t>(first), static_cast<hsize_t>(rows), data, transfer_);
    });
    return;
  }
  if (sizing_) return;
  // Gather to rank 0 (element counts must fit MPI's int).
  std::vector<int> sizes(ranks_), offsets(ranks_, 0);
  for (int r = 0; r < ranks_; ++r) {
    require(counts[r] * row_size < (1L << 31), name, "too many rows to gather to rank 0 (use parallel HDF5)");
    sizes[r] = static_cast<int>(counts[r] * row_size);
    if (r > 0) offsets[r] = offsets[r - 1] + sizes[r - 1];
  }
  std::vector<T> all(rank_ == 0 ? static_cast<size_t>(total * row_size) : 0);
  MPI_Gatherv(data, sizes[rank_], mpi_type<T>(), all.data(), sizes.data(), offsets.data(), mpi_type<T>(), 0, comm_);
  if (file_) file_->write(name, dims, all.data());
}

void H5RankFile::close() {
  if (file_) guarded([&] { file_->close(); });
  file_.reset();
  if (collective_) MPI_Barrier(comm_);  // every rank closed it (or the job has ended)
}

#define PROTEUS_RANK_FILE(T)                                                                           \
  template void H5RankFile::write<T>(std::string const&, std::vector<hsize_t> const&, T const*) const; \
  template void H5RankFile::write_rows<T>(std::string const&, std::vector<hsize_t> const&, long, T const*) const;
PROTEUS_RANK_FILE(float)
PROTEUS_RANK_FILE(double)
PROTEUS_RANK_FILE(std::int64_t)
PROTEUS_RANK_FILE(std::int32_t)
#undef PROTEUS_RANK_FILE

}  // namespace proteus::detail
