// The stop request: one sig_atomic_t written by the handler and read between chunks.
#include "proteus/detail/stop_signal.hpp"

#include <csignal>

namespace proteus::detail {

namespace {
volatile std::sig_atomic_t received = 0;

extern "C" void on_stop_signal(int signum) {
  if (received != 0) {  // the second signal: end now
    std::signal(signum, SIG_DFL);
    std::raise(signum);
    return;
  }
  received = signum;
}
}  // namespace

void install_stop_handlers() {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
}

int stop_signal() { return received; }
void request_stop(int signum) { received = signum; }
void clear_stop() { received = 0; }

}  // namespace proteus::detail
