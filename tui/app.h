// `leanrotor tui`: the loop that ties the view model, the screen and the workers together.
//
// The UI thread owns the Session and the Screen. Each turn of the loop: carry out the session's requests (open and
// save here, on the UI thread; prove, cancel, check and model loads go to the Worker), apply the events the workers
// posted, redraw when anything changed, then wait up to 50 ms for a key. So a key is answered within one turn however
// long a prefill, a decode or a Lean check takes.
//
// The terminal is restored on every way out: quit, an error, SIGINT/SIGTERM/SIGHUP (base/interrupt.h: the loop ends
// cleanly, the workers cancel the model and Lean work in flight; a second one exits at once), and fatal signals
// (restored, then the signal is re-raised).
#pragma once

#include <string>

#include "base/status.h"
#include "tui/session.h"
#include "tui/worker.h"

namespace lr::tui {

struct AppOptions {
  std::string
      file;  // the Lean file to open; empty: an unnamed buffer. A file that does not exist yet is created on save.
  Session::Settings settings;
  Worker::Options worker;
};

// Runs the session until the user quits or an interrupt arrives (base/interrupt.h's Interrupted() then says so).
// Errors: kUnavailable without a terminal, the file's read error.
Status RunApp(AppOptions options);

}  // namespace lr::tui
