// SIGTERM and SIGINT as a request to stop: the handler only records the signal; the pipeline
// looks at it after every chunk, every rank agrees, a checkpoint is written and the run ends with
// StopRequested. A second signal ends the process at once (the default action). The driver
// installs the handlers; a library user who does not gets the default behaviour.
#pragma once

namespace proteus::detail {

void install_stop_handlers();  // idempotent
int stop_signal();             // 0, or the first signal received
void request_stop(int signum); // what the handler records (tests call it directly)
void clear_stop();

}  // namespace proteus::detail
