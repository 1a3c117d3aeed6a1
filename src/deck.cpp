// Input deck: CLI11 tokenises the INI file; this registry checks every key's type and range and
// reports errors as "file:line: [section] key: problem".
#include "proteus/deck.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

#include "proteus/error.hpp"

namespace proteus {

namespace {

struct Key {
  std::string section, name, type, unit, doc;
  std::function<std::string(RunDeck const&)> get;
  std::function<void(RunDeck&, std::string const&)> set;  // throws std::invalid_argument
};

std::string trim(std::string s) {
  auto const a = s.find_first_not_of(" \t\r\n");
  auto const b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

template <class T>
T parse_number(std::string const& text, double lo, double hi) {
  std::string const t = trim(text);
  size_t used = 0;
  long double v = 0;
  try {
    if constexpr (std::is_integral_v<T>)
      v = static_cast<long double>(std::stoll(t, &used));
    else
      v = std::stold(t, &used);
  } catch (std::exception const&) {
    used = 0;
  }
  if (t.empty() || used != t.size())
    throw std::invalid_argument(std::string("expected ") + (std::is_integral_v<T> ? "an integer" : "a number") +
                                ", got '" + text + "'");
  if (!(v >= lo && v <= hi)) {
    std::ostringstream os;
    os << "value " << t << " is out of range [" << lo << ", " << hi << "]";
    throw std::invalid_argument(os.str());
  }
  return static_cast<T>(v);
}

bool parse_bool(std::string const& text) {
  std::string t = trim(text);
  std::transform(t.begin(), t.end(), t.begin(), ::tolower);
  if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
  if (t == "false" || t == "0" || t == "no" || t == "off") return false;
  throw std::invalid_argument("expected true or false, got '" + text + "'");
}

template <class T>
std::string show(T const& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return "\"" + v + "\"";
  } else if constexpr (std::is_same_v<T, std::vector<long>>) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
  } else {
    std::ostringstream os;
    os.precision(10);
    os << v;
    return os.str();
  }
}

template <class T>
char const* type_name() {
  if constexpr (std::is_same_v<T, bool>) return "bool";
  if constexpr (std::is_same_v<T, std::string>) return "string";
  if constexpr (std::is_same_v<T, std::vector<long>>) return "list of integers";
  if constexpr (std::is_integral_v<T>) return "integer";
  return "number";
}

template <class T>
Key key(std::string section, std::string name, std::string unit, std::string doc, T& (*ref)(RunDeck&),
        double lo = -std::numeric_limits<double>::max(), double hi = std::numeric_limits<double>::max()) {
  Key k{std::move(section), std::move(name), type_name<T>(), std::move(unit), std::move(doc), {}, {}};
  k.get = [ref](RunDeck const& d) { return show(ref(const_cast<RunDeck&>(d))); };
  k.set = [ref, lo, hi](RunDeck& d, std::string const& text) {
    if constexpr (std::is_same_v<T, bool>) {
      ref(d) = parse_bool(text);
    } else if constexpr (std::is_same_v<T, std::string>) {
      ref(d) = trim(text);
    } else if constexpr (std::is_same_v<T, std::vector<long>>) {
      std::vector<long> out;
      std::string item;
      std::istringstream is(text);
      while (std::getline(is, item, ','))
        if (!trim(item).empty()) out.push_back(parse_number<long>(item, lo, hi));
      ref(d) = out;
    } else {
      ref(d) = parse_number<T>(text, lo, hi);
    }
  };
  return k;
}

#define REF(expr) [](RunDeck& d) -> auto& { return d.expr; }
constexpr double big = 1e18;

std::vector<Key> const& registry() {
  static std::vector<Key> const keys = [] {
    std::vector<Key> k;
    // [model]
    k.push_back(key<int>("model", "embed_dim", "", "embedding width E", REF(model.embed_dim), 1, 65536));
    k.push_back(key<int>("model", "num_heads", "", "attention heads H (E must be divisible by H)", REF(model.num_heads), 1, 4096));
    k.push_back(key<int>("model", "num_gates", "", "router gates G; 0 = 2 max(H, heads_active_max)", REF(model.num_gates), 0, 65536));
    k.push_back(key<std::uint64_t>("model", "seed", "", "seed of the weights and the initial DNA", REF(model.seed), 0, big));
    k.push_back(key<bool>("model", "bias", "", "biases in the Q/K/V and output projections", REF(model.bias)));
    k.push_back(key<bool>("model", "dna_enable", "", "DNA prototypes blended with the router", REF(model.dna_enable)));
    k.push_back(key<float>("model", "dna_decay", "", "EMA decay of the prototypes per update", REF(model.dna_decay), 0, 0.999999));
    k.push_back(key<float>("model", "dna_threshold", "cosine", "similarity where DNA blending starts (theta)", REF(model.dna_threshold), -1, 0.999));
    k.push_back(key<float>("model", "dna_blend", "", "weight of the DNA distribution at full strength (lambda)", REF(model.dna_blend), 0, 1));
    k.push_back(key<float>("model", "dna_temperature", "", "softmax temperature of the similarities (tau)", REF(model.dna_temperature), 1e-6, 1e6));
    k.push_back(key<float>("model", "dna_usage_boost", "", "bias toward rarely used gates", REF(model.dna_usage_boost), 0, 1e6));
    k.push_back(key<float>("model", "dna_init_scale", "", "std of the initial prototypes", REF(model.dna_init_scale), 0, 1e6));
    k.push_back(key<int>("model", "heads_active_min", "heads", "fewest heads per token", REF(model.heads_active_min), 1, 4096));
    k.push_back(key<int>("model", "heads_active_max", "heads", "most heads per token; 0 = H", REF(model.heads_active_max), 0, 4096));
    k.push_back(key<bool>("model", "head_controller", "", "sparse-head controller: move the head range toward a target density", REF(model.head_controller)));
    k.push_back(key<float>("model", "head_target_density", "", "controller: target of the busiest head's row fraction", REF(model.head_target_density), 0, 1));
    k.push_back(key<float>("model", "head_tolerance", "", "controller: no change within target +- this", REF(model.head_tolerance), 0, 1));
    k.push_back(key<int>("model", "head_cooldown", "calls", "controller: forwards averaged per decision", REF(model.head_cooldown), 1, 1e9));
    k.push_back(key<int>("model", "head_controller_min", "heads", "controller: lowest heads_active_min; 0 = 1", REF(model.head_controller_min), 0, 4096));
    k.push_back(key<int>("model", "head_controller_max", "heads", "controller: highest heads_active_max; 0 = H", REF(model.head_controller_max), 0, 4096));
    k.push_back(key<float>("model", "router_top_p", "", "nucleus rule on head probabilities; 0 = off", REF(model.router_top_p), 0, 1));
    k.push_back(key<int>("model", "linear_head_k", "heads", "heads per token at alpha = 1", REF(model.linear_head_k), 1, 4096));
    k.push_back(key<bool>("model", "router_gradient", "", "scale each active head's context by its renormalised head probability, so that the router learns (changes outputs)", REF(model.router_gradient)));
    k.push_back(key<bool>("model", "rope", "", "rotary position embedding at original positions", REF(model.rope)));
    k.push_back(key<bool>("model", "tf32_projections", "", "projection GEMMs on TF32 tensor cores (CUDA + cuBLAS builds)", REF(model.tf32_projections)));
    k.push_back(key<bool>("model", "bf16_projections", "", "projection GEMMs with BF16 inputs, FP32 sums (BF16 tensor cores with cuBLAS)", REF(model.bf16_projections)));
    k.push_back(key<bool>("model", "kv_bf16", "", "keys and values stored in BF16 for the attention (FP32 sums)", REF(model.kv_bf16)));
    k.push_back(key<double>("model", "rope_base", "", "RoPE frequency base", REF(model.rope_base), 1.000001, 1e12));
    k.push_back(Key{"model", "mode", "string", "", "alpha: auto | linear (1) | subquad (0) | fixed (model.alpha)",
                    [](RunDeck const& d) { return "\"" + to_string(d.model.mode) + "\""; },
                    [](RunDeck& d, std::string const& v) {
                      try {
                        d.model.mode = parse_alpha_mode(trim(v));
                      } catch (Error const&) {
                        throw std::invalid_argument("expected auto, linear, subquad or fixed, got '" + v + "'");
                      }
                    }});
    k.push_back(key<float>("model", "alpha", "", "alpha in [0, 1] when mode = fixed", REF(model.alpha), 0, 1));
    k.push_back(key<int>("model", "switch_ctx", "tokens", "auto mode reaches alpha = 1 here", REF(model.switch_ctx), 2, 2e9));
    k.push_back(key<int>("model", "linear_L", "tokens", "candidates per query at alpha = 1", REF(model.linear_L), 1, 1e9));
    k.push_back(key<int>("model", "L_min", "tokens", "smallest candidate budget", REF(model.L_min), 1, 1e9));
    k.push_back(key<int>("model", "L_max", "tokens", "largest candidate budget; 0 = no cap (512 = upstream)", REF(model.L_max), 0, 1e9));
    k.push_back(key<int>("model", "window", "tokens", "base of the local window", REF(model.window), 1, 1e9));
    k.push_back(key<int>("model", "anchor_stride", "tokens", "spacing of anchor candidates; 0 = none", REF(model.anchor_stride), 0, 1e9));
    k.push_back(key<bool>("model", "use_dna_candidates", "", "add the most salient earlier tokens to each shortlist", REF(model.use_dna_candidates)));
    k.push_back(key<int>("model", "query_block_rows", "rows",
                          "query rows (over the batch, kept tokens only) projected and attended at a time", REF(model.query_block_rows), 1, 2e9));
    k.push_back(key<int>("model", "kv_stage_rows", "rows",
                         "with kv_bf16: K|V rows projected in FP32 at a time before rounding", REF(model.kv_stage_rows),
                         1, 2e9));
    k.push_back(key<float>("model", "force_dense_threshold", "", "dense when K/H >= this and alpha < 0.95; 0 = off", REF(model.force_dense_threshold), 0, 1));
    // [sequence]
    k.push_back(key<std::string>("sequence", "source", "", "synthetic | hdf5", REF(sequence.source)));
    k.push_back(key<long>("sequence", "tokens", "tokens", "sequence length T (synthetic source)", REF(sequence.tokens), 1, 4.0e9));
    k.push_back(key<std::uint64_t>("sequence", "seed", "", "seed of the synthetic tokens", REF(sequence.seed), 0, big));
    k.push_back(key<std::string>("sequence", "file", "path", "HDF5 file of the hdf5 source (relative to the deck)", REF(sequence.file)));
    k.push_back(key<std::string>("sequence", "dataset", "", "dataset [T x E] of float32 in that file", REF(sequence.dataset)));
    k.push_back(key<int>("sequence", "needles", "tokens", "synthetic source only: planted tokens close to a DNA prototype", REF(sequence.needles), 0, 1e7));
    k.push_back(key<double>("sequence", "needle_similarity", "cosine", "synthetic source only: cosine similarity of a needle to its prototype", REF(sequence.needle_similarity), 0, 1));
    k.push_back(key<std::vector<long>>("sequence", "needle_positions", "tokens", "synthetic: needle positions, empty = spread evenly; hdf5: positions whose arrival in the buffer is reported", REF(sequence.needle_positions), 0, 4.0e9));
    // [pipeline]
    k.push_back(key<long>("pipeline", "chunk_tokens", "tokens", "tokens per chunk on the device", REF(pipeline.chunk_tokens), 16, 1 << 26));
    k.push_back(key<double>("pipeline", "chunk_keep_ratio", "", "fraction of a chunk's tokens kept by token sparsity", REF(pipeline.chunk_keep_ratio), 1e-6, 1));
    k.push_back(key<double>("pipeline", "top_p", "", "nucleus over a chunk's kept scores", REF(pipeline.top_p), 1e-6, 1));
    k.push_back(key<long>("pipeline", "chunk_budget", "tokens", "most candidates per chunk", REF(pipeline.chunk_budget), 1, 1 << 26));
    k.push_back(key<long>("pipeline", "buffer_tokens", "tokens", "size of the global buffer of salient tokens", REF(pipeline.buffer_tokens), 1, 1 << 28));
    k.push_back(key<bool>("pipeline", "buffer_pass", "", "run attention over the global buffer", REF(pipeline.buffer_pass)));
    k.push_back(key<double>("pipeline", "buffer_keep_ratio", "", "token keep ratio of the buffer pass", REF(pipeline.buffer_keep_ratio), 1e-6, 1));
    k.push_back(key<bool>("pipeline", "second_pass", "", "give every token an output: its local window + the earlier buffer", REF(pipeline.second_pass)));
    k.push_back(key<long>("pipeline", "second_pass_window", "tokens", "local window of the second pass", REF(pipeline.second_pass_window), 1, 1 << 20));
    k.push_back(key<double>("pipeline", "memory_limit_gb", "GiB", "refuse decks whose estimate exceeds this; 0 = available memory", REF(pipeline.memory_limit_gb), 0, 1e6));
    // [checkpoint]
    k.push_back(key<std::string>("checkpoint", "directory", "path", "where checkpoints go (relative to the working directory)", REF(checkpoint.directory)));
    k.push_back(key<long>("checkpoint", "interval_chunks", "chunks", "checkpoint every this many chunks per rank; 0 = only at the end", REF(checkpoint.interval_chunks), 0, big));
    k.push_back(key<int>("checkpoint", "keep_last", "files", "checkpoints kept", REF(checkpoint.keep_last), 1, 1000));
    k.push_back(key<bool>("checkpoint", "at_end", "", "write a checkpoint when the run ends", REF(checkpoint.at_end)));
    k.push_back(key<bool>("checkpoint", "collective_io", "",
                          "with a parallel HDF5 build and more than one rank, every rank writes its own rows of a "
                          "checkpoint (MPI-IO); false, one rank or a serial HDF5 build: rows are gathered to rank 0, "
                          "which writes",
                          REF(checkpoint.collective_io)));
    k.push_back(key<bool>("checkpoint", "dna_dump", "", "append a DNA snapshot at every checkpoint interval", REF(checkpoint.dna_dump)));
    k.push_back(key<std::string>("checkpoint", "weights", "path", "load weights and DNA from this HDF5 file", REF(checkpoint.weights)));
    // [output]
    k.push_back(key<std::string>("output", "directory", "path", "summary.json, resolved deck and outputs", REF(output.directory)));
    k.push_back(key<bool>("output", "write_outputs", "", "write the buffer pass outputs to HDF5", REF(output.write_outputs)));
    k.push_back(key<double>("output", "progress_seconds", "s", "interval of progress lines when not on a terminal", REF(output.progress_seconds), 0, 1e6));
    k.push_back(key<double>("output", "warn_after_seconds", "s", "warn when the first chunk's rate puts the chunk stage above this", REF(output.warn_after_seconds), 0, 1e9));
    return k;
  }();
  return keys;
}
#undef REF

// Keys of the synthetic source only: a file source refuses them, so its resolved deck leaves
// them out (and can be read back).
bool applies(Key const& k, RunDeck const& deck) {
  bool const synthetic_only = k.section == "sequence" && (k.name == "needles" || k.name == "needle_similarity");
  return !(synthetic_only && deck.sequence.source == "hdf5");
}

size_t edit_distance(std::string const& a, std::string const& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t prev = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t const cur = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] != b[j - 1])});
      prev = cur;
    }
  }
  return row[b.size()];
}

std::string suggestion(std::string const& section, std::string const& name) {
  std::string best;
  size_t dist = 4;
  for (Key const& k : registry()) {
    size_t const d = edit_distance(name, k.name) + (k.section == section ? 0 : 2);
    if (d < dist) dist = d, best = k.section == section ? k.name : "[" + k.section + "] " + k.name;
  }
  return best.empty() ? "" : " (did you mean " + best + "?)";
}

void assign(RunDeck& deck, std::string const& where, std::string const& section, std::string const& name,
            std::string const& value) {
  std::string const label = "[" + section + "] " + name;
  for (Key const& k : registry())
    if (k.section == section && k.name == name) {
      try {
        k.set(deck, value);
      } catch (std::invalid_argument const& e) {
        fail(where, label + ": " + e.what());
      }
      deck.given.insert(section + "." + name);
      deck.origin[section + "." + name] = where;
      return;
    }
  bool const known_section = std::any_of(registry().begin(), registry().end(),
                                         [&](Key const& k) { return k.section == section; });
  if (!known_section)
    fail(where, "unknown section [" + section + "] (sections: model, sequence, pipeline, checkpoint, output)");
  fail(where, label + ": unknown key" + suggestion(section, name));
}

// Line of each "section.key" in the text, for messages (CLI11's items carry no line numbers).
std::map<std::string, int> key_lines(std::string const& text, std::string const& path) {
  std::map<std::string, int> lines;
  std::istringstream in(text);
  std::string line, section;
  for (int n = 1; std::getline(in, line); ++n) {
    std::string const t = trim(line.substr(0, line.find_first_of("#;")));
    if (t.empty()) continue;
    if (t.front() == '[' && t.back() == ']') {
      section = trim(t.substr(1, t.size() - 2));
      lines.emplace("[" + section + "]", n);
    } else if (auto eq = t.find('='); eq != std::string::npos) {
      std::string const name = trim(t.substr(0, eq));
      // CLI11 would merge a repeated key into a list: refuse it here, where the line is known.
      auto const [it, fresh] = lines.emplace(section + "." + name, n);
      if (!fresh)
        fail(path + ":" + std::to_string(n),
             "[" + section + "] " + name + ": given twice (first on line " + std::to_string(it->second) + ")");
    }
  }
  return lines;
}

}  // namespace

// The pipeline runs long sequences: alpha = 1 unless the deck says otherwise.
RunDeck::RunDeck() {
  model.embed_dim = 64;
  model.num_heads = 4;
  model.seed = 1;
  model.mode = AlphaMode::linear;
}

namespace {

// The deck's text with every line end made "\n" (CRLF and old CR-only files read as written).
std::string read_text(std::string const& path) {
  // A FIFO or a device would block or never end: only regular files are decks.
  std::error_code ec;
  bool const regular = std::filesystem::is_regular_file(path, ec);
  require(regular || !std::filesystem::exists(path, ec), path,
          "is not a regular file (a FIFO, device or directory?): give the deck as a file");
  std::ifstream file(path, std::ios::binary);
  require(file.is_open(), path, "cannot open the input deck");
  std::ostringstream raw;
  raw << file.rdbuf();
  require(!file.bad(), path, "read error: the input deck could not be read to its end");
  std::string text;
  std::string const in = raw.str();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '\r') {
      text += in[i];
    } else {
      text += '\n';
      if (i + 1 < in.size() && in[i + 1] == '\n') ++i;
    }
  }
  return text;
}

// Inline comments ("key = 1  # why") are ours; CLI11 knows only whole-line comments.
std::string strip_comments(std::string const& text) {
  std::istringstream lines(text);
  std::string out, line;
  while (std::getline(lines, line)) {
    bool quoted = false;
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '"') quoted = !quoted;
      if (!quoted && (line[i] == '#' || line[i] == ';')) {
        line.resize(i);
        break;
      }
    }
    out += line + "\n";
  }
  return out;
}

// Applies the deck text's keys to `deck` (errors name `origin` and the line).
void apply_text(RunDeck& deck, std::string const& text, std::string const& origin) {
  auto const lines = key_lines(text, origin);
  std::istringstream in(strip_comments(text));
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigINI().from_config(in);
  } catch (CLI::Error const& e) {
    fail(origin, std::string("cannot parse the deck: ") + e.what());
  }
  for (CLI::ConfigItem const& item : items) {
    if (item.name == "++" || item.name == "--") continue;
    std::string section;
    for (auto const& p : item.parents) section += (section.empty() ? "" : ".") + p;
    std::string const full = section + "." + item.name;
    auto const it = lines.find(full);
    std::string const where = origin + (it != lines.end() ? ":" + std::to_string(it->second) : "");
    if (section.empty()) fail(where, "key '" + item.name + "' is outside any [section]");
    std::string value;
    for (size_t i = 0; i < item.inputs.size(); ++i) value += (i ? "," : "") + item.inputs[i];
    assign(deck, where, section, item.name, value);
  }
  require(!deck.given.empty(), origin, "the deck sets no key (empty, or only comments): nothing says what to run");
}

}  // namespace

RunDeck read_deck(std::string const& path, std::vector<std::string> const& overrides) {
  RunDeck deck;
  deck.path = path;
  apply_text(deck, read_text(path), path);
  std::set<std::string> seen;
  for (std::string const& o : overrides) {
    auto const eq = o.find('='), dot = o.find('.');
    std::string const where = "--set " + o;
    require(eq != std::string::npos && dot != std::string::npos && dot < eq, where,
            "expected section.key=value");
    std::string const section = trim(o.substr(0, dot)), name = trim(o.substr(dot + 1, eq - dot - 1));
    require(seen.insert(section + "." + name).second, where, "[" + section + "] " + name + ": given twice with --set");
    assign(deck, where, section, name, o.substr(eq + 1));
  }
  return deck;
}

RunDeck read_deck_text(std::string const& text, std::string const& origin) {
  RunDeck deck;
  deck.path = origin;
  apply_text(deck, text, origin);
  return deck;
}

std::vector<std::string> deck_differences(RunDeck const& a, RunDeck const& b, std::set<std::string> const& ignore) {
  std::vector<std::string> out;
  for (Key const& k : registry()) {
    std::string const name = k.section + "." + k.name;
    if (ignore.count(name) || !applies(k, a) || !applies(k, b)) continue;
    std::string const va = k.get(a), vb = k.get(b);
    if (va != vb) out.push_back("[" + k.section + "] " + k.name + " (" + va + " against " + vb + ")");
  }
  return out;
}

void RunDeck::validate_model() const {
  try {
    (void)model.resolved();
  } catch (Error const& e) {
    // "Config.<field>: why": point at the line that set the field, when the deck set it.
    std::string const what = e.what();
    std::string const field = what.rfind("Config.", 0) == 0 ? what.substr(7, what.find(':') - 7) : "";
    auto const it = origin.find("model." + field);
    fail(it != origin.end() ? it->second : path, std::string("[model] ") + what);
  }
}

void RunDeck::validate(int ranks, long tokens) const {
  auto bad = [&](char const* label, std::string const& why) { fail(path, std::string(label) + ": " + why); };
  validate_model();
  // Head counts the model would clamp silently: refused when the deck asked for them.
  auto at = [&](std::string const& key) { return origin.count(key) ? origin.at(key) : path; };
  int const heads = model.num_heads, most = model.heads_active_max > 0 ? model.heads_active_max : heads;
  if (given.count("model.heads_active_max") && model.heads_active_max > heads)
    fail(at("model.heads_active_max"), "[model] heads_active_max: " + std::to_string(model.heads_active_max) +
                                           " exceeds num_heads = " + std::to_string(heads));
  if (given.count("model.heads_active_min") && model.heads_active_min > std::min(most, heads))
    fail(at("model.heads_active_min"), "[model] heads_active_min: " + std::to_string(model.heads_active_min) +
                                           " exceeds heads_active_max (or num_heads) = " +
                                           std::to_string(std::min(most, heads)));
  if (given.count("model.linear_head_k") && model.linear_head_k > heads)
    fail(at("model.linear_head_k"), "[model] linear_head_k: " + std::to_string(model.linear_head_k) +
                                        " exceeds num_heads = " + std::to_string(heads));
  if (sequence.source != "synthetic" && sequence.source != "hdf5")
    bad("[sequence] source", "expected synthetic or hdf5, got '" + sequence.source + "'");
  if (sequence.source == "hdf5" && sequence.file.empty()) bad("[sequence] file", "the hdf5 source needs a file");
  long const slice = (tokens + ranks - 1) / ranks;
  if (tokens < ranks)
    bad("[sequence] tokens", std::to_string(tokens) + " tokens cannot be split over " + std::to_string(ranks) + " ranks");
  if (pipeline.chunk_tokens > slice)
    bad("[pipeline] chunk_tokens", "chunk of " + std::to_string(pipeline.chunk_tokens) +
                                       " tokens is larger than a rank's slice (" + std::to_string(slice) +
                                       " tokens with " + std::to_string(ranks) + " ranks)");
  if (pipeline.buffer_tokens > tokens)
    bad("[pipeline] buffer_tokens", "buffer of " + std::to_string(pipeline.buffer_tokens) +
                                        " tokens exceeds the sequence (" + std::to_string(tokens) + ")");
  for (long p : sequence.needle_positions)
    if (p >= tokens) bad("[sequence] needle_positions", "position " + std::to_string(p) + " is past the end");
  std::set<long> distinct;
  for (long p : sequence.needle_positions)
    if (!distinct.insert(p).second)
      bad("[sequence] needle_positions", "position " + std::to_string(p) + " is listed twice");
  if (sequence.source == "hdf5") {
    // A file holds no planted needles: only their positions (facts the user knows of) apply.
    for (char const* name : {"needles", "needle_similarity"})
      if (given.count(std::string("sequence.") + name))
        bad((std::string("[sequence] ") + name).c_str(),
            "applies to the synthetic source only; with an hdf5 source list the positions to look for in "
            "[sequence] needle_positions");
    return;
  }
  if (sequence.needles > tokens) bad("[sequence] needles", "more needles than tokens");
  if (!sequence.needle_positions.empty() && static_cast<long>(sequence.needle_positions.size()) != sequence.needles)
    bad("[sequence] needle_positions", "lists " + std::to_string(sequence.needle_positions.size()) +
                                           " positions but needles = " + std::to_string(sequence.needles));
}


std::string deck_to_ini(RunDeck const& deck) {
  std::string out, section;
  for (Key const& k : registry()) {
    if (!applies(k, deck)) continue;
    if (k.section != section) {
      out += (section.empty() ? "" : "\n") + std::string("[") + k.section + "]\n";
      section = k.section;
    }
    out += k.name + " = " + k.get(deck) + "\n";
  }
  return out;
}

std::string deck_reference_markdown() {
  RunDeck const defaults;
  std::string out =
      "# Input deck reference\n\n"
      "Generated by `proteus_driver --deck-reference`; a test keeps this file in step with the code.\n"
      "Decks are INI files: `[section]` headers, `key = value` lines, `#` or `;` comments.\n"
      "Relative paths in `[sequence] file` are taken relative to the deck. Any key can be overridden\n"
      "on the command line with `--set section.key=value`.\n";
  std::string section;
  for (Key const& k : registry()) {
    if (k.section != section) {
      section = k.section;
      out += "\n## [" + section + "]\n\n| key | type | default | unit | meaning |\n|---|---|---|---|---|\n";
    }
    out += "| `" + k.name + "` | " + k.type + " | `" + k.get(defaults) + "` | " + (k.unit.empty() ? "-" : k.unit) +
           " | " + k.doc + " |\n";
  }
  return out;
}

}  // namespace proteus
