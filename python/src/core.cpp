// proteus_kokkos._core: the Python extension's compiled half. PyTorch tensors cross as Kokkos
// views of their own memory (no copies): each is checked here for type, dtype, device, layout and
// shape, and a bad one raises a Python exception that names the argument. On CUDA, kernels run on
// the stream PyTorch passes (its current stream), so they are ordered with PyTorch's own work.
// Kokkos is initialised once per process and finalised by finalize() (registered with atexit by the
// package), which first releases every Kokkos object still held from Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "proteus/checkpoint.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/error.hpp"
#include "proteus/multihead_attention.hpp"

namespace py = pybind11;

namespace proteus::python {
namespace {

// ---- Kokkos lifetime ----------------------------------------------------------------------------

// Anything from Python that holds Kokkos views; finalize() releases them all before Kokkos goes.
struct Held {
  Held();
  virtual ~Held();
  virtual void release() = 0;
};

std::set<Held*>& held() {
  static std::set<Held*> objects;
  return objects;
}
Held::Held() { held().insert(this); }
Held::~Held() { held().erase(this); }

bool kokkos_started_here = false, kokkos_finalized_here = false;

void initialize(int device) {
  if (Kokkos::is_initialized()) return;
  require(!kokkos_finalized_here, "proteus_kokkos", "Kokkos was finalised in this process and cannot restart");
  detail::initialize_on_device(device);
  kokkos_started_here = true;
}

void require_running() {
  require(Kokkos::is_initialized(), "proteus_kokkos", "Kokkos is not initialised (or was finalised at exit)");
}

// Execution-space instances on PyTorch's streams, made once per stream (an instance owns scratch
// memory: making one per call would allocate on every call).
std::map<std::uintptr_t, ExecSpace>& instances() {
  static std::map<std::uintptr_t, ExecSpace> made;
  return made;
}

// The execution space on PyTorch's stream (CUDA), or the host backend's default instance. PyTorch's
// default stream is CUDA's legacy default stream (handle 0), which is ordered with every blocking
// stream, Kokkos's own default stream included: there the default instance serves, as in C++.
ExecSpace space_on(std::uintptr_t stream) {
#ifdef KOKKOS_ENABLE_CUDA
  if (stream == 0) return ExecSpace();
  auto found = instances().find(stream);
  if (found == instances().end())
    found = instances().emplace(stream, Kokkos::Cuda(reinterpret_cast<cudaStream_t>(stream))).first;
  return found->second;
#else
  (void)stream;
  return ExecSpace();
#endif
}

// Releases every Kokkos object held from Python, then finalises Kokkos if this module started it.
void finalize() {
  for (Held* h : held()) h->release();
  instances().clear();
  if (kokkos_started_here && Kokkos::is_initialized()) {
    Kokkos::finalize();
    kokkos_finalized_here = true;
  }
}

// ---- tensors -> views -------------------------------------------------------------------------

std::string build_device() {
#ifdef KOKKOS_ENABLE_CUDA
  return "cuda";
#else
  return "cpu";
#endif
}

int kokkos_device() {
#ifdef KOKKOS_ENABLE_CUDA
  return ExecSpace().cuda_device();
#else
  return -1;
#endif
}

std::string shape_text(std::vector<long> const& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// A torch tensor's data pointer and shape, after checking it against dtype, this build's device,
// contiguity and `shape` (-1: any extent). `name` is the argument's name in the error.
template <class T>
struct Tensor {
  T* data = nullptr;
  std::vector<long> shape;
};

// torch.Tensor and a dtype by name ("torch.float32"), looked up once per process. They are never
// released: Python objects held in statics would be freed after the interpreter's finalisation.
py::handle torch_attr(std::string const& name) {
  static auto* cache = new std::map<std::string, py::object>();
  auto found = cache->find(name);
  if (found == cache->end())
    found = cache->emplace(name, py::module_::import("torch").attr(name.substr(6).c_str())).first;
  return found->second;
}

// The tensor's device, checked against this build's (a CUDA build: torch's CUDA device that Kokkos
// runs on). Two attribute reads on the common path; the error texts are built on failure only.
void check_device(py::handle t, std::string const& name) {
  bool const cuda_build = build_device() == "cuda";
  bool const is_cuda = t.attr("is_cuda").cast<bool>();
  bool const right = cuda_build ? is_cuda && t.attr("get_device")().cast<int>() == kokkos_device()
                                : t.attr("is_cpu").cast<bool>();
  if (right) return;
  std::string const device = py::str(t.attr("device"));
  if (!(cuda_build && is_cuda))  // a tensor on another kind of device (else: another CUDA device)
    throw py::value_error(name + ": tensor on " + device + ", but this proteus_kokkos build runs on " +
                          build_device() + " (tensors are never copied between devices)");
  throw py::value_error(name + ": tensor on " + device + ", but proteus runs on cuda:" +
                        std::to_string(kokkos_device()) + " in this process");
}

template <class T>
Tensor<T> tensor(py::handle t, std::string const& name, char const* dtype, std::vector<long> const& shape) {
  if (!py::isinstance(t, torch_attr("torch.Tensor")))
    throw py::type_error(name + ": expected a torch.Tensor, got " + std::string(py::str(py::type::handle_of(t))));
  py::object const got_dtype = t.attr("dtype");
  if (!got_dtype.is(torch_attr(dtype)))
    throw py::type_error(name + ": dtype " + std::string(py::str(got_dtype)) + ", expected " + dtype);
  check_device(t, name);
  Tensor<T> out;
  for (auto d : t.attr("shape")) out.shape.push_back(d.cast<long>());
  bool same = out.shape.size() == shape.size();
  for (size_t i = 0; same && i < shape.size(); ++i) same = shape[i] < 0 || shape[i] == out.shape[i];
  if (!same) throw py::value_error(name + ": shape " + shape_text(out.shape) + ", expected " + shape_text(shape));
  if (!t.attr("is_contiguous")().cast<bool>())
    throw py::value_error(name + ": not contiguous (proteus does not copy tensors: call .contiguous() first)");
  out.data = reinterpret_cast<T*>(t.attr("data_ptr")().cast<std::uintptr_t>());
  return out;
}

// rows = -1: any number of rows.
TokenMatrix matrix(py::handle t, std::string const& name, long rows, long cols) {
  Tensor<float> const m = tensor<float>(t, name, "torch.float32", {rows, cols});
  return TokenMatrix(m.data, m.shape[0], m.shape[1]);
}
// A contiguous [..., cols] tensor (2 or more dimensions) as its rows: [B, T, E] -> [B*T x E], no copy.
// rows = -1: any number of rows.
TokenMatrix row_matrix(py::handle t, std::string const& name, long rows, long cols) {
  long const ndim = py::len(t.attr("shape"));
  if (ndim < 2)
    throw py::value_error(name + ": " + std::to_string(ndim) + " dimension(s), expected [..., " +
                          std::to_string(cols) + "]");
  std::vector<long> shape(static_cast<size_t>(ndim), -1);
  shape.back() = cols;
  Tensor<float> const m = tensor<float>(t, name, "torch.float32", shape);
  long n = 1;
  for (long i = 0; i + 1 < ndim; ++i) n *= m.shape[static_cast<size_t>(i)];
  if (rows >= 0 && n != rows)
    throw py::value_error(name + ": shape " + shape_text(m.shape) + " holds " + std::to_string(n) + " rows of " +
                          std::to_string(cols) + ", expected " + std::to_string(rows));
  return TokenMatrix(m.data, n, cols);
}
TokenVector vector(py::handle t, std::string const& name, long n) {
  return TokenVector(tensor<float>(t, name, "torch.float32", {n}).data, n);
}

// ---- the module --------------------------------------------------------------------------------

py::dict stats_dict(ForwardStats const& s) {
  py::dict d;
  d["batch"] = s.batch;
  d["tokens"] = s.tokens;
  d["alpha"] = s.alpha;
  d["mode"] = s.mode;
  d["shortlist_budget"] = s.plan.budget;
  d["heads_k"] = s.heads_k;
  d["tokens_kept"] = s.tokens_kept;
  d["active_rows"] = s.active_rows;
  d["mean_active_heads"] = s.mean_active_heads;
  d["density"] = s.density;
  d["distinct_heads"] = s.distinct_heads;
  d["router_entropy"] = s.router_entropy;
  d["mean_salience"] = s.mean_salience;
  d["mean_beta"] = s.mean_beta;
  d["tokens_caught"] = s.tokens_caught;
  d["gates_updated"] = s.gates_updated;
  d["mean_candidates"] = s.mean_candidates;
  d["max_head_density"] = s.max_head_density;
  if (s.controller) {
    py::dict c;
    c["step"] = s.controller->step;
    c["density"] = s.controller->density;
    c["action"] = s.controller->action;
    c["heads_min"] = s.controller->heads_min;
    c["heads_max"] = s.controller->heads_max;
    c["shortlist_scale"] = s.controller->shortlist_scale;
    d["controller"] = c;
  } else {
    d["controller"] = py::none();
  }
  return d;
}

struct State : Held {
  std::optional<TrainingState> state = TrainingState{};
  void release() override { state.reset(); }
  TrainingState& get() {
    require_running();
    return *state;
  }
};

class Module : public Held {
 public:
  explicit Module(Config const& config) { module_.emplace(ExecSpace(), config); }
  void release() override { module_.reset(); }

  Config config() const { return get().config(); }

  // Copies the module's seeded initial weights and DNA into the given tensors.
  void copy_initial(std::uintptr_t stream, py::dict const& tensors) {
    ExecSpace const space = space_on(stream);
    Weights const w = tensor_weights(tensors, "");
    DnaState const dna = tensor_dna(tensors);
    Kokkos::deep_copy(space, w.qkv_weight, get().weights().qkv_weight);
    Kokkos::deep_copy(space, w.qkv_bias, get().weights().qkv_bias);
    Kokkos::deep_copy(space, w.out_weight, get().weights().out_weight);
    Kokkos::deep_copy(space, w.out_bias, get().weights().out_bias);
    Kokkos::deep_copy(space, w.router_weight, get().weights().router_weight);
    Kokkos::deep_copy(space, dna.prototypes, get().dna().prototypes);
    Kokkos::deep_copy(space, dna.usage, get().dna().usage);
    Kokkos::deep_copy(space, dna.confidence, get().dna().confidence);
  }

  // From now on the module computes with these tensors in place (PyTorch's parameters and buffers).
  void bind(py::dict const& tensors) {
    get().share_weights(tensor_weights(tensors, ""));
    get().share_dna(tensor_dna(tensors));
  }

  // y = attention(x) for x [B*T x E] (batch rows stacked; or [B, T, E]) at `positions`; the DNA EMA runs when
  // update_dna (the Python module passes training mode and Config::dna_update) and the head
  // controller observes the call when adapt_heads (training mode).
  // With defer, returns None without waiting for the call's last kernels: last_statistics() reads
  // its statistics when asked (PyTorch's host work meanwhile overlaps the GPU's).
  py::object forward(std::uintptr_t stream, py::handle x, int batch, py::handle positions, py::handle y,
                     bool update_dna, bool adapt_heads, bool defer) {
    ExecSpace const space = space_on(stream);
    Inputs const in = inputs(x, batch, positions, y);
    return keep_statistics(stream, get().run(space, in.x, batch, in.positions, in.y,
                                             options(update_dna, adapt_heads, defer)));
  }

  // forward() that also records what backward() needs in `state`.
  py::object forward_training(std::uintptr_t stream, py::handle x, int batch, py::handle positions, py::handle y,
                              State& state, bool update_dna, bool adapt_heads, bool defer) {
    ExecSpace const space = space_on(stream);
    Inputs const in = inputs(x, batch, positions, y);
    return keep_statistics(stream, get().run_training(space, in.x, batch, in.positions, in.y, state.get(),
                                                      options(update_dna, adapt_heads, defer)));
  }

  // The latest forward's statistics (None before the first), completed if it deferred them.
  py::object last_statistics() {
    if (!last_) return py::none();
    get().complete_statistics(space_on(last_stream_), *last_);
    return stats_dict(*last_);
  }

  void backward(std::uintptr_t stream, State& state, py::handle dy, py::handle dx, py::dict const& grads) {
    ExecSpace const space = space_on(stream);
    TrainingState& s = state.get();
    long const n = static_cast<long>(s.x.extent(0)), e = embed();
    get().backward(space, s, row_matrix(dy, "grad_output", n, e), row_matrix(dx, "grad_input", n, e),
                   tensor_weights(grads, "grad of "));
  }

  // For perf/bench_python.py: wall-clock milliseconds of `repeat` training steps (run_training, then
  // backward) issued by a C++ loop in this process, each between two fences, as bench_module's loop
  // issues them; with check, the forward checks its input for NaN, as forward_training does.
  // Tells the cost of the Python process from the cost of each call's way through Python.
  std::vector<double> time_training_steps(std::uintptr_t stream, py::handle x, int batch, py::handle positions,
                                          py::handle y, py::handle dy, py::handle dx, py::dict const& grads,
                                          int repeat, bool defer, bool check) {
    ExecSpace const space = space_on(stream);
    Inputs const in = inputs(x, batch, positions, y);
    long const n = static_cast<long>(in.x.extent(0)), e = embed();
    TokenMatrix const dyv = row_matrix(dy, "grad_output", n, e), dxv = row_matrix(dx, "grad_input", n, e);
    Gradients const g = tensor_weights(grads, "grad of ");
    TrainingState state;
    std::vector<double> ms;
    for (int i = 0; i < repeat; ++i) {
      Kokkos::fence();
      auto const t0 = std::chrono::steady_clock::now();
      ForwardStats st =
          get().run_training(space, in.x, batch, in.positions, in.y, state, options(false, true, defer, check));
      get().backward(space, state, dyv, dxv, g);
      Kokkos::fence();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      get().complete_statistics(space, st);
    }
    return ms;
  }

  // The C++ drop-in forward (CausalGeneticMultiheadAttention::forward) on a [B, T, E] or [T, B, E]
  // query, with an optional [B, T] uint8 padding mask, into `out` (the same shape).
  void forward_module(std::uintptr_t stream, py::handle query, py::object const& padding, py::handle out) {
    ExecSpace const space = space_on(stream);
    Tensor<float> const q = tensor<float>(query, "query", "torch.float32", {-1, -1, embed()});
    std::vector<long> const& shape = q.shape;
    BatchTensor const qv(q.data, shape[0], shape[1], shape[2]);
    BatchTensor const ov(tensor<float>(out, "out", "torch.float32", shape).data, shape[0], shape[1], shape[2]);
    CausalGeneticMultiheadAttention::PaddingMask mask;
    if (!padding.is_none()) {
      long const b = config().batch_first ? shape[0] : shape[1], t = config().batch_first ? shape[1] : shape[0];
      mask = CausalGeneticMultiheadAttention::PaddingMask(
          tensor<std::uint8_t>(padding, "key_padding_mask", "torch.uint8", {b, t}).data, b, t);
    }
    auto result = get().forward(space, qv, {}, {}, mask);
    Kokkos::deep_copy(space, ov, result.first);
    space.fence();
  }

  // Appends the DNA to a DNA-dump time series (the driver's format, read by proteus_inspect and
  // tools/plot_dna.py).
  void dump_dna(std::uintptr_t stream, std::string const& path, long tokens_seen) {
    space_on(stream).fence();
    append_dna_snapshot(path, get().dna(), tokens_seen);
  }

  void save(std::uintptr_t stream, std::string const& path) {
    space_on(stream).fence();
    write_model_file(path, get());
  }
  void load(std::uintptr_t stream, std::string const& path) {
    ExecSpace const space = space_on(stream);
    load_model(space, path, get());
    space.fence();
  }

 private:
  std::optional<CausalGeneticMultiheadAttention> module_;

  CausalGeneticMultiheadAttention& get() {
    require_running();
    return *module_;
  }
  CausalGeneticMultiheadAttention const& get() const {
    require_running();
    return *module_;
  }
  long embed() const { return config().embed_dim; }

  std::optional<ForwardStats> last_;  // the latest forward's statistics, and its stream
  std::uintptr_t last_stream_ = 0;

  // The Python forwards check their input for NaN/Inf (RunOptions::check_input: "query: contains ...").
  static RunOptions options(bool update_dna, bool adapt_heads, bool defer, bool check = true) {
    RunOptions o;
    o.update_dna = update_dna;
    o.adapt_heads = adapt_heads;
    o.defer_statistics = defer;
    o.check_input = check;
    return o;
  }
  py::object keep_statistics(std::uintptr_t stream, ForwardStats const& st) {
    last_ = st;
    last_stream_ = stream;
    return st.pending ? py::object(py::none()) : py::object(stats_dict(st));
  }

  struct Inputs {
    TokenMatrix x, y;
    PositionVector positions;
  };
  Inputs inputs(py::handle x, int batch, py::handle positions, py::handle y) const {
    long const e = embed();
    Inputs in;
    in.x = row_matrix(x, "query", -1, e);
    long const n = static_cast<long>(in.x.extent(0));
    require(batch > 0 && n % batch == 0, "batch", "must divide the number of query rows");
    in.y = row_matrix(y, "output", n, e);
    in.positions = PositionVector(tensor<std::int64_t>(positions, "positions", "torch.int64", {n}).data, n);
    return in;
  }

  Weights tensor_weights(py::dict const& t, std::string const& prefix) const {
    long const e = embed(), g = config().num_gates;
    auto item = [&](char const* key) -> py::handle {
      if (!t.contains(key)) throw py::key_error(prefix + key + ": missing");
      return t[key];
    };
    Weights w;
    w.qkv_weight = matrix(item("qkv_weight"), prefix + "attention.qkv.weight", 3 * e, e);
    w.qkv_bias = vector(item("qkv_bias"), prefix + "attention.qkv.bias", 3 * e);
    w.out_weight = matrix(item("out_weight"), prefix + "attention.proj.weight", e, e);
    w.out_bias = vector(item("out_bias"), prefix + "attention.proj.bias", e);
    w.router_weight = matrix(item("router_weight"), prefix + "attention.head_router.linear.weight", g, e);
    return w;
  }
  DnaState tensor_dna(py::dict const& t) const {
    long const e = embed(), g = config().num_gates;
    DnaState dna;
    dna.prototypes = matrix(t["prototypes"], "attention.routing_prototypes", g, e);
    dna.usage = vector(t["usage"], "attention.routing_usage_ema", g);
    dna.confidence = vector(t["confidence"], "attention.routing_confidence", g);
    return dna;
  }
};

// ---- configuration ------------------------------------------------------------------------------

AlphaMode mode_of(std::string const& name) { return parse_alpha_mode(name); }

void bind_config(py::module_& m) {
  py::class_<Config> c(m, "Config");
  c.def(py::init<>())
      .def("resolved", &Config::resolved)
      .def_property(
          "mode", [](Config const& k) { return to_string(k.mode); },
          [](Config& k, std::string const& v) { k.mode = mode_of(v); });
#define PROTEUS_FIELD(name) c.def_readwrite(#name, &Config::name)
  PROTEUS_FIELD(embed_dim); PROTEUS_FIELD(num_heads); PROTEUS_FIELD(num_gates); PROTEUS_FIELD(bias);
  PROTEUS_FIELD(batch_first); PROTEUS_FIELD(seed);
  PROTEUS_FIELD(dna_enable); PROTEUS_FIELD(dna_update); PROTEUS_FIELD(dna_decay); PROTEUS_FIELD(dna_threshold);
  PROTEUS_FIELD(dna_blend); PROTEUS_FIELD(dna_temperature); PROTEUS_FIELD(dna_usage_boost);
  PROTEUS_FIELD(dna_init_scale);
  PROTEUS_FIELD(token_sparse); PROTEUS_FIELD(token_keep_ratio); PROTEUS_FIELD(token_keep_ref);
  PROTEUS_FIELD(token_keep_min_ratio); PROTEUS_FIELD(token_keep_min); PROTEUS_FIELD(token_keep_guard);
  PROTEUS_FIELD(token_keep_threshold);
  PROTEUS_FIELD(gate_to_head); PROTEUS_FIELD(heads_active_min); PROTEUS_FIELD(heads_active_max);
  PROTEUS_FIELD(head_curve); PROTEUS_FIELD(seq_low); PROTEUS_FIELD(seq_high); PROTEUS_FIELD(router_top_p);
  PROTEUS_FIELD(nucleus_per_token); PROTEUS_FIELD(linear_head_k); PROTEUS_FIELD(router_gradient);
  PROTEUS_FIELD(rope); PROTEUS_FIELD(rope_base); PROTEUS_FIELD(tf32_projections); PROTEUS_FIELD(bf16_projections);
  PROTEUS_FIELD(kv_bf16);
  PROTEUS_FIELD(alpha); PROTEUS_FIELD(switch_ctx); PROTEUS_FIELD(dense_alpha_cutoff);
  PROTEUS_FIELD(force_dense_threshold); PROTEUS_FIELD(linear_L); PROTEUS_FIELD(L_min); PROTEUS_FIELD(L_max);
  PROTEUS_FIELD(window); PROTEUS_FIELD(anchor_stride); PROTEUS_FIELD(use_local); PROTEUS_FIELD(use_anchors);
  PROTEUS_FIELD(use_dna_candidates); PROTEUS_FIELD(frac_local); PROTEUS_FIELD(frac_anchor); PROTEUS_FIELD(frac_dna);
  PROTEUS_FIELD(query_block_rows);
  PROTEUS_FIELD(kv_stage_rows);
  PROTEUS_FIELD(head_controller); PROTEUS_FIELD(head_target_density); PROTEUS_FIELD(head_tolerance);
  PROTEUS_FIELD(head_cooldown); PROTEUS_FIELD(head_controller_min); PROTEUS_FIELD(head_controller_max);
#undef PROTEUS_FIELD
}

}  // namespace
}  // namespace proteus::python

PYBIND11_MODULE(_core, m) {
  using namespace proteus::python;
  m.doc() = "proteus Kokkos kernels (private: use proteus_kokkos.CausalGeneticMultiheadAttention)";
  py::register_exception<proteus::Error>(m, "ProteusError", PyExc_ValueError);
  m.def("initialize", &initialize, py::arg("device") = 0);
  m.def("finalize", &finalize);
  m.def("is_initialized", [] { return Kokkos::is_initialized(); });
  m.def("device", &build_device, "'cuda' or 'cpu': where this build's kernels run");
  bind_config(m);
  py::class_<State>(m, "TrainingState").def(py::init<>());
  py::class_<Module>(m, "Module")
      .def(py::init<proteus::Config const&>())
      .def_property_readonly("config", &Module::config)
      .def("copy_initial", &Module::copy_initial)
      .def("bind", &Module::bind)
      .def("forward", &Module::forward, py::arg("stream"), py::arg("x"), py::arg("batch"), py::arg("positions"),
           py::arg("y"), py::arg("update_dna"), py::arg("adapt_heads"), py::arg("defer") = false)
      .def("forward_training", &Module::forward_training, py::arg("stream"), py::arg("x"), py::arg("batch"),
           py::arg("positions"), py::arg("y"), py::arg("state"), py::arg("update_dna"), py::arg("adapt_heads"),
           py::arg("defer") = false)
      .def("last_statistics", &Module::last_statistics)
      .def("backward", &Module::backward)
      .def("time_training_steps", &Module::time_training_steps)
      .def("forward_module", &Module::forward_module)
      .def("dump_dna", &Module::dump_dna)
      .def("save", &Module::save)
      .def("load", &Module::load);
}
