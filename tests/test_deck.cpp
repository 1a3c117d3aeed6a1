// Input decks: parsing, overrides, and errors that name the file, line and key; the committed
// docs/input_deck.md must equal what the registry generates; the memory estimate the deck is
// checked against.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "proteus/deck.hpp"
#include "proteus/error.hpp"
#include "proteus/pipeline.hpp"
#include "proteus_catch.hpp"

using namespace proteus;

namespace {
std::string write_deck(std::string const& name, std::string const& text) {
  auto const path = std::filesystem::temp_directory_path() / ("proteus_test_" + name + ".in");
  std::ofstream(path) << text;
  return path.string();
}
std::string error_of(std::string const& path, std::vector<std::string> const& overrides = {}) {
  try {
    read_deck(path, overrides);
  } catch (Error const& e) {
    return e.what();
  }
  return "no error";
}
}  // namespace

TEST_CASE("a deck sets every section; comments and overrides work", "[deck]") {
  std::string const path = write_deck("good",
                                      "# a comment\n[model]\nembed_dim = 32  # inline comment\nnum_heads = 2\n"
                                      "mode = fixed\nalpha = 0.3\n\n[sequence]\ntokens = 5000\n"
                                      "needle_positions = 10, 20, 30\nneedles = 3\n[pipeline]\nbuffer_pass = false\n");
  RunDeck d = read_deck(path, {"pipeline.chunk_tokens=1024", "model.seed=9"});
  CHECK(d.model.embed_dim == 32);
  CHECK(d.model.num_heads == 2);
  CHECK(d.model.mode == AlphaMode::fixed);
  CHECK(d.model.alpha == Approx(0.3));
  CHECK(d.sequence.tokens == 5000);
  CHECK(d.sequence.needle_positions == std::vector<long>{10, 20, 30});
  CHECK_FALSE(d.pipeline.buffer_pass);
  CHECK(d.pipeline.chunk_tokens == 1024);
  CHECK(d.model.seed == 9);
  CHECK_NOTHROW(d.validate(2, d.sequence.tokens));
  // The resolved deck reads back to the same values.
  std::string const again = write_deck("again", deck_to_ini(d));
  CHECK(deck_to_ini(read_deck(again)) == deck_to_ini(d));
}

TEST_CASE("deck errors name the file, line and key", "[deck][errors]") {
  std::string const unknown = write_deck("unknown", "[model]\nembed_dim = 32\nembd_dim = 4\n");
  CHECK(error_of(unknown) == unknown + ":3: [model] embd_dim: unknown key (did you mean embed_dim?)");
  std::string const type = write_deck("type", "[model]\n\nnum_heads = four\n");
  CHECK(error_of(type) == type + ":3: [model] num_heads: expected an integer, got 'four'");
  std::string const range = write_deck("range", "[pipeline]\ntop_p = 1.5\n");
  CHECK(error_of(range) == range + ":2: [pipeline] top_p: value 1.5 is out of range [1e-06, 1]");
  std::string const section = write_deck("section", "[modle]\nembed_dim = 3\n");
  CHECK(error_of(section).find(section + ":2: unknown section [modle]") == 0);
  std::string const twice = write_deck("twice", "[model]\nseed = 1\nseed = 2\n");
  CHECK(error_of(twice).find("seed: given twice") != std::string::npos);
  std::string const boolean = write_deck("bool", "[pipeline]\nbuffer_pass = maybe\n");
  CHECK(error_of(boolean) == boolean + ":2: [pipeline] buffer_pass: expected true or false, got 'maybe'");
  CHECK(error_of("/nonexistent/deck.in") == "/nonexistent/deck.in: cannot open the input deck");
  std::string const good = write_deck("ok", "[model]\nseed = 1\n");
  CHECK(error_of(good, {"model.num_heads=x"}) == "--set model.num_heads=x: [model] num_heads: expected an integer, got 'x'");
  CHECK(error_of(good, {"nonsense"}) == "--set nonsense: expected section.key=value");
  // Bytes that are not text (a damaged deck) are written as \xNN; UTF-8 stays as it is.
  std::string const binary = write_deck("binary", "[model]\n\xa3\xff\x01key = 3\n");
  CHECK(error_of(binary) == binary + ":2: [model] \\xa3\\xff\\x01key: unknown key");
  std::string const accented = write_deck("accented", "[model]\nd\xc3\xa9" "bit = 3\n");
  CHECK(error_of(accented) == accented + ":2: [model] d\xc3\xa9" "bit: unknown key");
}

TEST_CASE("cross-key checks name the key to change", "[deck][errors]") {
  RunDeck d;
  d.path = "deck.in";
  d.sequence.tokens = 10000;
  d.pipeline.chunk_tokens = 4096;
  d.pipeline.buffer_tokens = 512;
  auto message = [&](int ranks, long tokens) {
    try {
      d.validate(ranks, tokens);
    } catch (Error const& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(message(2, 10000) == "no error");
  CHECK(message(4, 10000).find("[pipeline] chunk_tokens: chunk of 4096 tokens is larger than a rank's slice") != std::string::npos);
  d.pipeline.buffer_tokens = 20000;
  CHECK(message(1, 10000).find("[pipeline] buffer_tokens") != std::string::npos);
  d.pipeline.buffer_tokens = 512;
  d.model.num_heads = 3;
  CHECK(message(1, 10000).find("[model] Config.embed_dim") != std::string::npos);
  d.model.num_heads = 4;
  d.sequence.source = "tape";
  CHECK(message(1, 10000).find("[sequence] source") != std::string::npos);
}

TEST_CASE("needle keys that cannot apply to a file source are refused by name", "[deck][errors][needles]") {
  auto message = [](std::string const& name, std::string const& text) {
    std::string const path = write_deck(name, text);
    try {
      read_deck(path, {"pipeline.chunk_tokens=256", "pipeline.buffer_tokens=64"}).validate(1, 1000);
    } catch (Error const& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string const file = "[sequence]\nsource = hdf5\nfile = tokens.h5\n";
  CHECK(message("file_plain", file) == "no error");
  CHECK(message("file_positions", file + "needle_positions = 5, 900\n") == "no error");
  CHECK(message("file_count", file + "needles = 3\n")
            .find("[sequence] needles: applies to the synthetic source only") != std::string::npos);
  CHECK(message("file_similarity", file + "needle_similarity = 0.5\n")
            .find("[sequence] needle_similarity: applies to the synthetic source only") != std::string::npos);
  CHECK(message("file_past_end", file + "needle_positions = 1000\n").find("[sequence] needle_positions") !=
        std::string::npos);
  // The resolved deck of a file source leaves those keys out, so it reads back.
  RunDeck const resolved = read_deck(write_deck("file_resolved", file + "needle_positions = 5\n"));
  CHECK(message("file_again", deck_to_ini(resolved)) == "no error");
  // The synthetic source keeps its rules (positions must match the count).
  CHECK(message("synthetic", "[sequence]\nneedles = 2\nneedle_positions = 5\n").find("needles = 2") !=
        std::string::npos);
}

TEST_CASE("line ends, empty decks, repeated overrides and model errors are handled by name", "[deck][errors]") {
  // CR-only (old Mac) and CRLF files read as written, with the right line numbers.
  for (char const* end : {"\r", "\r\n"}) {
    std::string const e = end;
    std::string const path = write_deck("ends", "[model]" + e + "seed = 5" + e + "[sequence]" + e + "tokens = 32768" + e);
    RunDeck const d = read_deck(path);
    CHECK(d.model.seed == 5);
    CHECK(d.sequence.tokens == 32768);
    std::string const bad = write_deck("ends_bad", "[model]" + e + "seed = 5" + e + "embd_dim = 3" + e);
    CHECK(error_of(bad).find(bad + ":3: [model] embd_dim: unknown key") == 0);
  }
  // A deck that sets nothing does not silently run the default job.
  for (char const* text : {"", "# only a comment\n\n; and another\n", "[model]\n"}) {
    std::string const path = write_deck("empty", text);
    CHECK(error_of(path) == path + ": the deck sets no key (empty, or only comments): nothing says what to run");
  }
  std::string const good = write_deck("good_set", "[model]\nseed = 1\n");
  CHECK(error_of(good, {"model.seed=2", "model.seed=3"}) ==
        "--set model.seed=3: [model] seed: given twice with --set");
  // A model error names the line of the key that caused it.
  std::string const heads = write_deck("heads", "[model]\nembed_dim = 66\nnum_heads = 4\n");
  RunDeck const d = read_deck(heads);
  try {
    d.validate(1, 100000);
    FAIL("no error");
  } catch (Error const& e) {
    CHECK(std::string(e.what()).find(heads + ":2: [model] Config.embed_dim") == 0);
  }
  // Head counts the model would otherwise clamp without a word.
  for (auto const& [text, line] : std::vector<std::pair<std::string, int>>{
           {"[model]\nnum_heads = 4\nheads_active_min = 6\n", 3},
           {"[model]\nnum_heads = 4\nheads_active_max = 5\n", 3},
           {"[model]\nnum_heads = 4\nheads_active_max = 2\nheads_active_min = 3\n", 4},
           {"[model]\nnum_heads = 4\nlinear_head_k = 9\n", 3}}) {
    std::string const path = write_deck("clamp", text);
    try {
      read_deck(path).validate(1, 100000);
      FAIL("no error for " << text);
    } catch (Error const& e) {
      INFO(text);
      CHECK(std::string(e.what()).find(path + ":" + std::to_string(line) + ": [model] ") == 0);
      CHECK(std::string(e.what()).find(" exceeds ") != std::string::npos);
    }
  }
  std::string const twice = write_deck("needles_twice", "[sequence]\nneedles = 2\nneedle_positions = 5, 5\n");
  try {
    read_deck(twice, {"pipeline.chunk_tokens=256", "pipeline.buffer_tokens=64"}).validate(1, 1000);
    FAIL("no error");
  } catch (Error const& e) {
    CHECK(std::string(e.what()).find("[sequence] needle_positions: position 5 is listed twice") != std::string::npos);
  }
}

TEST_CASE("a FIFO or a directory as the deck is refused at once, not read forever", "[deck][errors]") {
  auto const dir = std::filesystem::temp_directory_path() / "proteus_test_deck_fifo";
  std::filesystem::create_directories(dir);
  std::string const fifo = (dir / "deck.fifo").string();
  std::filesystem::remove(fifo);
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  CHECK(error_of(fifo) == fifo + ": is not a regular file (a FIFO, device or directory?): give the deck as a file");
  CHECK(error_of(dir.string()).find("is not a regular file") != std::string::npos);
  std::filesystem::remove(fifo);
}

TEST_CASE("the deck a checkpoint stores reads back, and differences are named by key", "[deck][restart]") {
  RunDeck a = read_deck(write_deck("stored", "[model]\nseed = 4\n[sequence]\nseed = 11\n"));
  RunDeck const back = read_deck_text(deck_to_ini(a), "checkpoint.h5 (its deck)");
  CHECK(deck_differences(a, back, {}).empty());
  RunDeck b = a;
  b.sequence.seed = 12;
  b.output.directory = "elsewhere";
  std::vector<std::string> const diff = deck_differences(a, b, {"output.directory"});
  REQUIRE(diff.size() == 1);
  CHECK(diff[0] == "[sequence] seed (11 against 12)");
}

TEST_CASE("docs/input_deck.md is what the registry generates", "[deck][docs]") {
  std::ifstream in(std::string(PROTEUS_SOURCE_DIR) + "/docs/input_deck.md");
  REQUIRE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  CHECK(text.str() == deck_reference_markdown());
}

TEST_CASE("the memory estimate counts the buffer pass's BF16 storage", "[deck][memory]") {
  RunDeck d;
  d.model.embed_dim = 64;
  d.model.num_heads = 4;
  d.model.kv_stage_rows = 1000;
  d.pipeline.buffer_tokens = 4096;
  d.pipeline.chunk_tokens = 8192;
  d.pipeline.chunk_budget = 4096;  // every chunk fills the buffer: s = 4096 buffer tokens
  long const tokens = 1 << 20;
  double const s = 4096, e = 64;
  double const fp32 = estimate_rank_bytes(d, tokens, 1);
  // kv_bf16: K|V in 2 bytes a value instead of 4, plus one stage of FP32 rows.
  RunDeck kv = d;
  kv.model.kv_bf16 = true;
  CHECK(fp32 - estimate_rank_bytes(kv, tokens, 1) == s * 2 * e * 2 - 1000 * 2 * e * 4);
  // bf16_projections: the rows and the weights of the GEMMs rounded to BF16.
  RunDeck projections = d;
  projections.model.bf16_projections = true;
  CHECK(estimate_rank_bytes(projections, tokens, 1) - fp32 == s * e * 2 + 2 * e * e * 2);
}
