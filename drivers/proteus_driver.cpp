// proteus_driver: the main job. Parses the command line and the deck, runs the pipeline and
// prints the summary. Thin by design: everything it does lives in the library.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <Kokkos_Core.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
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
  double mpi_init = 0.0, kokkos_init = 0.0, blas_init = 0.0, kokkos_finalize = 0.0, mpi_finalize = 0.0;
  bool overlapped = false;
};

// Kokkos' start, with its own copy of the arguments (it removes the --kokkos-* ones; the rest go
// to the command line's parser), and with the BLAS library's start-up after it when asked.
struct DeviceStart {
  std::vector<char*> args;  // argv's pointers and the terminating null
  int argc = 0;
  double kokkos = 0.0, blas = 0.0;
  std::exception_ptr error;
  void operator()(bool blas_too) {
    try {
      auto t0 = Clock::now();
      Kokkos::initialize(argc, args.data());
      kokkos = seconds_since(t0);
      if (!blas_too) return;
      t0 = Clock::now();
      proteus::detail::start_blas(Kokkos::DefaultExecutionSpace());
      blas = seconds_since(t0);
    } catch (...) {
      error = std::current_exception();
    }
  }
};

// PROTEUS_STARTUP: "sequential" (MPI, then Kokkos) or "overlapped" (Kokkos and the BLAS library
// start on a second thread while MPI starts on this one: neither needs the other, Kokkos picks the
// device from the launcher's local-rank variables, and on a GPU node MPI took 0.44-0.74 s and
// Kokkos + cuBLAS about 0.2 s). Kokkos with a host thread pool (OpenMP) always starts in sequence.
bool overlapped_startup(std::string& error) {
  char const* value = std::getenv("PROTEUS_STARTUP");
  std::string const mode = value ? value : "sequential";
  if (mode != "sequential" && mode != "overlapped")
    error = "PROTEUS_STARTUP=" + mode + ": expected sequential or overlapped";
  return mode == "overlapped" && proteus::detail::kokkos_starts_on_any_thread;
}

struct Options {
  std::string deck;
  std::vector<std::string> overrides;
  std::string restart;
  bool version = false, reference = false, print_deck = false, quiet = false;
};

int main_body(int argc, char** argv, int rank, ProcessTimes const& startup, bool& ran) {
  Options o;
  CLI::App app{"proteus_driver: Proteus attention over long sequences, split into chunks over MPI ranks.\n"
               "Example: mpirun -np 2 proteus_driver inputs/quickstart.in"};
  app.add_option("deck", o.deck, "input deck (INI sections [model] [sequence] [pipeline] [checkpoint] [output])")
      ->check(CLI::ExistingFile);
  app.add_option("--set", o.overrides, "override a deck key: --set section.key=value (repeatable)");
  app.add_option("--restart", o.restart, "resume from this checkpoint (same deck shape and rank count)")
      ->check(CLI::ExistingFile);
  app.add_flag("--version", o.version, "print the version and exit");
  app.add_flag("--deck-reference", o.reference, "print the reference of every deck key (Markdown) and exit");
  app.add_flag("--print-deck", o.print_deck, "print the resolved deck and exit");
  app.add_flag("-q,--quiet", o.quiet, "print only the summary");
  app.footer("Environment: PROTEUS_STARTUP=sequential (default: MPI, then Kokkos) or overlapped (Kokkos and the BLAS\n"
             "library start on a second thread while MPI starts; hosts with an OpenMP pool start in sequence).");
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
    if (startup.overlapped)
      std::printf("  start-up          MPI %s, alongside Kokkos %s and BLAS %s (rank 0; not in the run's total)\n",
                  format_duration(startup.mpi_init).c_str(), format_duration(startup.kokkos_init).c_str(),
                  format_duration(startup.blas_init).c_str());
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
  if (!startup_error.empty()) {
    std::fprintf(stderr, "proteus_driver: error: %s\n", startup_error.c_str());
    return 2;
  }
  DeviceStart device{std::vector<char*>(argv, argv + argc + 1), argc};
  std::thread starter;
  if (times.overlapped) starter = std::thread([&device] { device(true); });
  auto t0 = Clock::now();
  MPI_Init(&argc, &argv);
  times.mpi_init = seconds_since(t0);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (times.overlapped)
    starter.join();
  else
    device(false);
  times.kokkos_init = device.kokkos;
  times.blas_init = device.blas;
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
