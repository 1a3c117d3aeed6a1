// proteus_driver: the main job. Parses the command line and the deck, runs the pipeline and
// prints the summary. Thin by design: everything it does lives in the library.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <Kokkos_Core.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "proteus/deck.hpp"
#include "proteus/detail/kokkos_compat.hpp"
#include "proteus/detail/stop_signal.hpp"
#include "proteus/error.hpp"
#include "proteus/pipeline.hpp"
#include "proteus/progress.hpp"
#include "proteus/version.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Wall time of the process's start-up and shut-down (rank 0's), outside the run's own total.
struct ProcessTimes {
  double mpi_init = 0.0, kokkos_init = 0.0, blas_init = 0.0, warm_up = 0.0, waited = 0.0;
  double kokkos_finalize = 0.0, mpi_finalize = 0.0;
  bool overlapped = false, warmed = false;
  std::string warm_up_error;
};

// Kokkos' start, with its own copy of the arguments (it removes the --kokkos-* ones; the rest go
// to the command line's parser); when overlapped, the BLAS library's start-up after it, and the
// run's first kernels at the deck's shapes when a deck to warm up for is given.
struct DeviceStart {
  std::vector<char*> args;  // argv's pointers and the terminating null
  int argc = 0;
  double kokkos = 0.0, blas = 0.0, warm_up = 0.0;
  std::string warm_up_error;  // why the warm-up gave up (a deck the run proper refuses, and says why)
  std::exception_ptr error;
  void operator()(bool overlapped, std::optional<proteus::RunDeck> const& warm_deck) {
    try {
      auto t0 = Clock::now();
      Kokkos::initialize(argc, args.data());
      kokkos = seconds_since(t0);
      if (!overlapped) return;
      t0 = Clock::now();
      proteus::detail::start_blas(Kokkos::DefaultExecutionSpace());
      blas = seconds_since(t0);
      if (warm_deck) warm(*warm_deck);
    } catch (...) {
      error = std::current_exception();
    }
  }
  void warm(proteus::RunDeck const& deck) {
    auto const t0 = Clock::now();
    try {
      proteus::warm_up(Kokkos::DefaultExecutionSpace(), deck);
    } catch (std::exception const& e) {
      warm_up_error = e.what();
    }
    warm_up = seconds_since(t0);
  }
};

// The value of environment variable `name` (`fallback` when unset), one of `allowed`; otherwise
// `error` says so.
std::string env_choice(char const* name, std::string const& fallback, std::vector<std::string> const& allowed,
                       std::string& error) {
  char const* value = std::getenv(name);
  std::string const choice = value ? value : fallback;
  if (std::find(allowed.begin(), allowed.end(), choice) != allowed.end()) return choice;
  std::string list;
  for (size_t i = 0; i < allowed.size(); ++i)
    list += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + allowed[i];
  error = std::string(name) + "=" + choice + ": expected " + list;
  return fallback;
}

// PROTEUS_STARTUP: "overlapped" (Kokkos and the BLAS library start on a second thread while MPI
// starts on this one: neither needs the other, Kokkos picks the device from the launcher's
// local-rank variables; on an H200 node MPI took 0.48-0.69 s and Kokkos + cuBLAS 0.3 s beside it)
// or "sequential" (MPI, then Kokkos). Kokkos with a host thread pool (OpenMP) starts in sequence.
// MPI_Init sets environment variables while the device's libraries read them on the other thread:
// environment_lock.cpp makes them take turns.
bool overlapped_startup(std::string& error) {
  std::string const mode = env_choice("PROTEUS_STARTUP", "overlapped", {"overlapped", "sequential"}, error);
  return mode == "overlapped" && proteus::detail::kokkos_starts_on_any_thread;
}

// PROTEUS_WARMUP: whether an overlapped start also launches the run's first kernels (proteus::warm_up)
// while MPI starts: "auto" (on a GPU), "on" or "off".
bool warm_up_wanted(std::string& error) {
  std::string const mode = env_choice("PROTEUS_WARMUP", "auto", {"auto", "on", "off"}, error);
  return mode == "on" || (mode == "auto" && !proteus::on_host);
}

struct Options {
  std::string deck;
  std::vector<std::string> overrides;
  std::string restart;
  bool version = false, reference = false, print_deck = false, quiet = false;
};

void add_options(CLI::App& app, Options& o) {
  app.add_option("deck", o.deck, "input deck (INI sections [model] [sequence] [pipeline] [checkpoint] [output])")
      ->check(CLI::ExistingFile);
  app.add_option("--set", o.overrides, "override a deck key: --set section.key=value (repeatable)");
  app.add_option("--restart", o.restart, "resume from this checkpoint (same deck shape and rank count)")
      ->check(CLI::ExistingFile);
  app.add_flag("--version", o.version, "print the version and exit");
  app.add_flag("--deck-reference", o.reference, "print the reference of every deck key (Markdown) and exit");
  app.add_flag("--print-deck", o.print_deck, "print the resolved deck and exit");
  app.add_flag("-q,--quiet", o.quiet, "print only the summary");
  app.footer("Environment: PROTEUS_STARTUP=overlapped (default: Kokkos and the BLAS library start on a second thread\n"
             "while MPI starts; hosts with an OpenMP pool start in sequence) or sequential (MPI, then Kokkos).\n"
             "PROTEUS_WARMUP=auto (default: on with a GPU), on or off: an overlapped start also launches the run's\n"
             "first kernels once at the deck's shapes, so that the run's first chunk does not pay for their loading.");
}

// The deck the command line names, read before anything starts, for the warm-up; none when the
// command line asks for something else or the deck does not read (the run proper says why).
std::optional<proteus::RunDeck> deck_to_warm_up_for(int argc, char** argv) {
  Options o;
  CLI::App app;
  add_options(app, o);
  app.allow_extras();  // --kokkos-* options, which Kokkos takes later
  try {
    app.parse(argc, argv);
    if (o.deck.empty() || o.version || o.reference || o.print_deck) return std::nullopt;
    return proteus::read_deck(o.deck, o.overrides);
  } catch (std::exception const&) {
    return std::nullopt;
  }
}

int main_body(int argc, char** argv, int rank, ProcessTimes const& startup, bool& ran) {
  Options o;
  CLI::App app{"proteus_driver: Proteus attention over long sequences, split into chunks over MPI ranks.\n"
               "Example: mpirun -np 2 proteus_driver inputs/quickstart.in"};
  add_options(app, o);
  try {
    app.parse(argc, argv);
  } catch (CLI::ParseError const& e) {
    if (rank != 0) return e.get_exit_code();
    return app.exit(e);
  }
  if (o.version) {
    if (rank == 0) std::printf("proteus %s (%s), Kokkos %d\n", PROTEUS_VERSION_STRING, PROTEUS_GIT_COMMIT, KOKKOS_VERSION);
    return 0;
  }
  if (o.reference) {
    if (rank == 0) std::fputs(proteus::deck_reference_markdown().c_str(), stdout);
    return 0;
  }
  if (o.deck.empty()) {
    if (rank == 0) std::fprintf(stderr, "proteus_driver: error: an input deck is required (see --help)\n");
    return 2;
  }
  proteus::RunDeck deck;
  try {
    deck = proteus::read_deck(o.deck, o.overrides);  // the same on every rank: errors are agreed
  } catch (proteus::Error const& e) {
    if (rank == 0) std::fprintf(stderr, "proteus_driver: error: %s\n", e.what());
    return 1;
  }
  int ranks = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  if (o.print_deck) {
    if (rank == 0) std::fputs(proteus::deck_to_ini(deck).c_str(), stdout);
    return 0;
  }
  // SIGTERM / SIGINT: finish the chunk at hand, checkpoint, end (a second signal ends at once).
  // Installed on every rank before rank 0 prints the deck, so that a signal sent once the deck is
  // printed is always a stop request (tests/stop_run.sh relies on it).
  proteus::detail::install_stop_handlers();
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0 && !o.quiet)
    std::printf("proteus %s (%s) on %d rank(s), execution space %s\n--- resolved deck (%s) ---\n%s---\n",
                PROTEUS_VERSION_STRING, PROTEUS_GIT_COMMIT, ranks, Kokkos::DefaultExecutionSpace::name(),
                o.deck.c_str(), proteus::deck_to_ini(deck).c_str());
  std::fflush(stdout);
  proteus::RunSummary summary;
  try {
    Kokkos::DefaultExecutionSpace const space;
    summary = proteus::run_pipeline(space, deck, MPI_COMM_WORLD,
                                    o.restart.empty() ? std::nullopt : std::optional<std::string>(o.restart));
  } catch (proteus::StopRequested const& e) {
    if (rank == 0) std::fprintf(stderr, "proteus_driver: %s\n", e.what());
    return 128 + e.signal();
  } catch (proteus::CollectiveError const& e) {
    if (rank == 0) std::fprintf(stderr, "proteus_driver: error: %s\n", e.what());
    return 1;
  } catch (std::exception const& e) {
    // Only this rank failed: the others cannot agree any more.
    std::fprintf(stderr, "proteus_driver: error on rank %d: %s\n", rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  if (rank == 0) {
    std::fputs(summary.to_text().c_str(), stdout);
    std::printf("  summary.json      %s/summary.json\n", deck.output.directory.c_str());
    using proteus::detail::format_duration;
    std::string const warm_up = !startup.warmed ? ""
                                : startup.warm_up_error.empty() ? " and warm-up " + format_duration(startup.warm_up)
                                                                : " and a failed warm-up (" + startup.warm_up_error + ")";
    if (startup.overlapped)
      std::printf("  start-up          MPI %s, alongside Kokkos %s, BLAS %s%s; then waited %s (rank 0; not in the "
                  "run's total)\n",
                  format_duration(startup.mpi_init).c_str(), format_duration(startup.kokkos_init).c_str(),
                  format_duration(startup.blas_init).c_str(),
                  warm_up.c_str(),
                  format_duration(startup.waited).c_str());
    else
      std::printf("  start-up          MPI %s, then Kokkos %s (rank 0; not in the run's total)\n",
                  format_duration(startup.mpi_init).c_str(), format_duration(startup.kokkos_init).c_str());
  }
  ran = true;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string startup_error;
  ProcessTimes times;
  times.overlapped = overlapped_startup(startup_error);
  bool const warm = warm_up_wanted(startup_error) && times.overlapped;
  if (!startup_error.empty()) {
    std::fprintf(stderr, "proteus_driver: error: %s\n", startup_error.c_str());
    return 2;
  }
  DeviceStart device{std::vector<char*>(argv, argv + argc + 1), argc};
  std::thread starter;
  std::optional<proteus::RunDeck> const warm_deck = warm ? deck_to_warm_up_for(argc, argv) : std::nullopt;
  if (times.overlapped) starter = std::thread([&device, &warm_deck] { device(true, warm_deck); });
  auto t0 = Clock::now();
  MPI_Init(&argc, &argv);
  times.mpi_init = seconds_since(t0);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  t0 = Clock::now();
  if (times.overlapped)
    starter.join();
  else
    device(false, std::nullopt);
  times.waited = times.overlapped ? seconds_since(t0) : 0.0;
  times.kokkos_init = device.kokkos;
  times.blas_init = device.blas;
  times.warm_up = device.warm_up;
  times.warmed = warm_deck.has_value();
  times.warm_up_error = device.warm_up_error;
  if (device.error) std::rethrow_exception(device.error);  // as an exception from Kokkos::initialize did before
  if (times.overlapped) proteus::detail::use_kokkos_device_here();
  int rc = 0;
  bool ran = false;
  try {
    rc = main_body(device.argc, device.args.data(), rank, times, ran);
  } catch (...) {
    Kokkos::finalize();
    throw;
  }
  t0 = Clock::now();
  Kokkos::finalize();
  times.kokkos_finalize = seconds_since(t0);
  t0 = Clock::now();
  MPI_Finalize();
  times.mpi_finalize = seconds_since(t0);
  if (ran && rank == 0)
    std::printf("  shut-down         Kokkos %s, MPI %s (rank 0)\n",
                proteus::detail::format_duration(times.kokkos_finalize).c_str(),
                proteus::detail::format_duration(times.mpi_finalize).c_str());
  return rc;
}
