// proteus_inspect: reads a proteus HDF5 file (checkpoint or DNA dump), checks its schema and
// version, and reports what the DNA learned: prototype norms and similarities, the gate->head
// graph, gate usage, tokens caught and the top buffer positions. --json for scripts. Thin: the
// report is proteus::inspect_file.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "proteus/error.hpp"
#include "proteus/inspect.hpp"

int main(int argc, char** argv) {
  CLI::App app{"proteus_inspect: summarise a proteus checkpoint or DNA dump (HDF5)"};
  std::string file;
  bool json = false;
  int top = 10;
  app.add_option("file", file, "checkpoint_*.h5 or dna_dump.h5")->required()->check(CLI::ExistingFile);
  app.add_flag("--json", json, "machine-readable output");
  app.add_option("--top", top, "buffer positions to list");
  CLI11_PARSE(app, argc, argv);
  try {
    proteus::DnaReport const r = proteus::inspect_file(file, top);
    std::fputs((json ? proteus::to_json(r) : proteus::to_text(r)).c_str(), stdout);
  } catch (proteus::Error const& e) {
    std::fprintf(stderr, "proteus_inspect: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
