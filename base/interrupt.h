// Interrupts: SIGINT, SIGTERM and SIGHUP ask the running command to stop.
//
// The first signal sets a flag (Interrupted()) that long work polls: model requests, Lean checks, model loading.
// Work in flight is cancelled, nothing new starts, what is finished is kept, and the command exits with
// InterruptExitCode() (128 + the signal: 130 for SIGINT, 143 for SIGTERM). A second signal exits at once with that
// code, after the exit hooks (lsp kills its Lean servers, the TUI restores the terminal).
//
// A signal the process was started with ignored (SIGINT in a background job) stays ignored.
#pragma once

#include <atomic>

namespace lr {

// Installs the handlers (once; later calls only return the flag). `note` (may be null) is written to stderr on the
// first signal, e.g. "interrupted: stopping (Ctrl-C again quits at once)".
const std::atomic<bool>* InstallInterruptHandler(const char* note);

// True once an interrupt arrived.
bool Interrupted();
// 128 + the first interrupt's signal number; 0 before any.
int InterruptExitCode();

// Adds a function run by the second interrupt just before the process exits. It runs in a signal handler: only
// async-signal-safe calls. At most 8 hooks; returns false when they are all taken.
bool AddInterruptExitHook(void (*hook)());

// True when InstallInterruptHandler() handles `sig` (a handler chained after it defers to it).
bool InterruptHandlerOwns(int sig);

}  // namespace lr
