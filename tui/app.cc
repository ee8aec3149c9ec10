#include "tui/app.h"

#include <csignal>
#include <memory>

#include "base/file.h"
#include "base/interrupt.h"
#include "tui/screen.h"

namespace lr::tui {
namespace {

void OnFatalSignal(int sig) {
  RestoreTerminal();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Carries out what the session asked for; returns false on quit.
bool Carry(Session& session, Worker& worker) {
  bool keep_going = true;
  for (Request& r : session.TakeRequests()) {
    if (auto* open = std::get_if<OpenRequest>(&r)) {
      Result<std::string> text = ReadFile(open->path);
      session.OnEvent(OpenedEvent{open->path, text.ok(), text.ok() ? *text : "", text.status().ToString()});
    } else if (auto* save = std::get_if<SaveRequest>(&r)) {
      Status s = WriteFileAtomic(save->path, save->text);
      session.OnEvent(SavedEvent{save->path, save->version, s.ok(), s.ToString()});
    } else if (std::holds_alternative<QuitRequest>(r)) {
      keep_going = false;
    } else {
      worker.Handle(r);
    }
  }
  return keep_going;
}

}  // namespace

Status RunApp(AppOptions options) {
  std::string text;
  if (!options.file.empty()) {
    Result<std::string> read = ReadFile(options.file);
    if (read.ok())
      text = std::move(read).value();
    else if (read.status().code() != StatusCode::kNotFound)
      return read.status();
  }
  LR_ASSIGN_OR_RETURN(std::unique_ptr<Screen> screen, Screen::Open());
  InstallInterruptHandler(nullptr);
  AddInterruptExitHook(RestoreTerminal);
  for (int sig : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE}) std::signal(sig, OnFatalSignal);

  EventQueue events;
  Session session(options.settings);
  Worker worker(std::move(options.worker), &events);
  session.Load(options.file, std::move(text));
  if (!options.file.empty() && session.text().empty()) session.OnEvent(MessageEvent{"new file " + options.file});

  // Drawing every turn is cheap (curses sends only what changed) and covers resizes and streamed text alike.
  while (!Interrupted()) {
    if (!Carry(session, worker)) break;
    for (Event& e : events.Drain()) session.OnEvent(std::move(e));
    screen->Draw(session);
    if (std::optional<Key> key = screen->ReadKey(50)) session.OnKey(*key);
  }
  screen.reset();  // the terminal is back before the workers wind down (a Lean check may take a moment)
  return Status::Ok();
}

}  // namespace lr::tui
