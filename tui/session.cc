#include "tui/session.h"

#include <algorithm>
#include <charconv>
#include <utility>

namespace lr::tui {
namespace {

constexpr int kPageLines = 20;
constexpr size_t kHistoryMax = 100;

void AppendUtf8(std::string* out, char32_t c) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

// Removes the last UTF-8 code point of `s`.
void PopUtf8(std::string* s) {
  while (!s->empty()) {
    const unsigned char c = static_cast<unsigned char>(s->back());
    s->pop_back();
    if ((c & 0xC0) != 0x80) return;
  }
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A non-negative integer argument; -1 when `s` is not one.
int ParsePositive(std::string_view s) {
  int v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < 0) return -1;
  return v;
}

}  // namespace

std::string_view AttemptStateName(AttemptState state) {
  switch (state) {
    case AttemptState::kWaiting: return "waiting";
    case AttemptState::kGenerating: return "generating";
    case AttemptState::kChecking: return "checking";
    case AttemptState::kAccepted: return "accepted";
    case AttemptState::kFailed: return "failed";
    case AttemptState::kCancelled: return "cancelled";
    case AttemptState::kNotChecked: return "not checked";
  }
  return "?";
}

std::vector<std::string> SplitLines(std::string_view text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    lines.emplace_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  if (lines.empty()) lines.emplace_back();
  return lines;
}

Session::Session(Settings settings) : settings_(settings) {
  SetText("");
  version_ = 0;
  status_.model = "no model";
  status_.lean = "not started";
}

const std::vector<std::string>& Session::HelpLines() {
  static const std::vector<std::string> kLines = {
      "Keys",
      "  Up/Down PgUp/PgDn Home/End  move the cursor",
      "  n / N                        next / previous sorry",
      "  Enter or p                   prove the theorem under the cursor",
      "  Esc                          cancel the proof (or close this help, the diff, the command line)",
      "  Tab / Shift-Tab, 1-9         select an attempt",
      "  d                            diff of the selected attempt against the current proof",
      "  a                            accept the selected attempt into the file (Lean-checked proofs only)",
      "  s                            save the file",
      "  o                            open a file (starts /open)",
      "  / or :                       command line (Up/Down: history)",
      "  ?                            this help",
      "  q, Ctrl-C                    quit (asks again when there are unsaved changes)",
      "Commands",
      "  /k N           candidates per proof       /turns N       repair turns per candidate",
      "  /model PATH    load another model         /kv K[,V]      KV cache formats (reloads the model)",
      "  /open FILE     open a Lean file           /save [FILE]   save (atomically)",
      "  /theorem TEXT  add a theorem to the buffer and move to it",
      "  /prove  /accept [N]  /diff [N]  /help  /quit  /quit! (discard unsaved changes)",
  };
  return kLines;
}

void Session::Load(std::string path, std::string text) {
  path_ = std::move(path);
  SetText(std::move(text));
  dirty_ = false;
  // Start at the first theorem with a sorry, else at the first theorem.
  int start = theorems_.empty() ? -1 : 0;
  for (int i = static_cast<int>(theorems_.size()) - 1; i >= 0; --i)
    if (theorems_[i].has_sorry) start = i;
  MoveCursor(start < 0 ? 0 : TheoremFirstLine(start));
  RequestCheck();
}

void Session::SetText(std::string text) {
  text_ = std::move(text);
  lines_ = SplitLines(text_);
  theorems_ = lsp::FindDeclarations(text_);
  ++version_;
  cursor_ = std::clamp(cursor_, 0, static_cast<int>(lines_.size()) - 1);
}

void Session::RequestCheck() {
  checking_ = true;
  requests_.push_back(CheckRequest{version_, text_, path_});
}

std::vector<Request> Session::TakeRequests() { return std::exchange(requests_, {}); }

int Session::TheoremFirstLine(int i) const { return lsp::LineOfOffset(text_, theorems_[i].begin); }

int Session::TheoremLastLine(int i) const {
  const lsp::Declaration& d = theorems_[i];
  return lsp::LineOfOffset(text_, d.proof_end > d.begin ? d.proof_end - 1 : d.begin);
}

int Session::current_theorem() const {
  int found = -1;
  for (int i = 0; i < static_cast<int>(theorems_.size()); ++i)
    if (TheoremFirstLine(i) <= cursor_) found = i;
  if (found < 0 && !theorems_.empty()) found = 0;
  return found;
}

std::vector<agent::LeanMessage> Session::MessagesAtCursor() const {
  std::vector<agent::LeanMessage> out;
  if (!have_report()) return out;
  const int t = current_theorem();
  const int first = t < 0 ? cursor_ : TheoremFirstLine(t), last = t < 0 ? cursor_ : TheoremLastLine(t);
  for (const agent::LeanMessage& m : report_.messages)
    if (m.line >= first && m.line <= last) out.push_back(m);
  return out;
}

std::vector<agent::LeanGoal> Session::GoalsAtCursor() const {
  std::vector<agent::LeanGoal> out;
  if (!have_report()) return out;
  const int t = current_theorem();
  const int first = t < 0 ? cursor_ : TheoremFirstLine(t), last = t < 0 ? cursor_ : TheoremLastLine(t);
  for (const agent::LeanGoal& g : report_.goals)
    if (g.line >= first && g.line <= last) out.push_back(g);
  return out;
}

void Session::MoveCursor(int line) { cursor_ = std::clamp(line, 0, static_cast<int>(lines_.size()) - 1); }

void Session::JumpToSorry(int direction) {
  const int n = static_cast<int>(theorems_.size());
  if (n == 0) return Note("no theorems in this file");
  const int here = current_theorem();
  // The theorem under the cursor counts as "next" only when the cursor is above its first line.
  int start = direction > 0 ? (cursor_ < TheoremFirstLine(here) ? here : here + 1) : here - 1;
  for (int step = 0; step < n; ++step) {
    const int i = ((start + direction * step) % n + n) % n;
    if (theorems_[i].has_sorry) {
      MoveCursor(TheoremFirstLine(i));
      return;
    }
  }
  Note("no sorry left in this file");
}

int Session::RunTheoremIndex() const {
  for (int i = 0; i < static_cast<int>(theorems_.size()); ++i)
    if (lsp::SameStatement(theorems_[i].Header(text_), run_.task.statement)) return i;
  return -1;
}

void Session::Prove() {
  if (run_.running) return Note("a proof is running: Esc cancels it");
  const int t = current_theorem();
  if (t < 0) return Note("no theorem here: open a Lean file or add one with /theorem");
  const lsp::Declaration& d = theorems_[t];
  if (d.name == "example") return Note("examples have no name to check axioms of: make it a theorem to prove it");
  agent::ProofTask task;
  task.name = d.name;
  task.full_name = d.full_name;
  task.preamble = text_.substr(0, d.begin);
  task.statement = std::string(d.Header(text_));
  task.proof = std::string(d.Proof(text_));
  if (Trim(task.proof).empty()) task.proof = " by\n  sorry";
  run_ = RunView{};
  run_.id = ++run_ids_;
  run_.running = true;
  run_.task = task;
  run_.attempts.assign(settings_.k, AttemptView{});
  selected_ = 0;
  diff_visible_ = false;
  requests_.push_back(ProveRequest{run_.id, std::move(task), settings_.k, settings_.turns, path_, text_});
  Note("proving " + d.name + " (k=" + std::to_string(settings_.k) + ", turns=" + std::to_string(settings_.turns) + ")");
}

void Session::Cancel() {
  if (!run_.running) return;
  requests_.push_back(CancelRequest{});
  Note("cancelling...");
}

void Session::SelectAttempt(int index) {
  const int n = static_cast<int>(run_.attempts.size());
  if (n == 0) return Note("no attempts yet: Enter proves the theorem under the cursor");
  if (index < 0 || index >= n) return Note("no attempt " + std::to_string(index + 1));
  selected_ = index;
}

std::vector<DiffLine> Session::SelectedDiff() const {
  if (selected_ >= static_cast<int>(run_.attempts.size())) return {};
  const AttemptView& a = run_.attempts[selected_];
  const int t = RunTheoremIndex();
  std::string statement = run_.task.statement, proof = run_.task.proof;
  if (t >= 0) {
    statement = std::string(theorems_[t].Header(text_));
    proof = std::string(theorems_[t].Proof(text_));
  }
  const std::string current = statement + proof;
  return DiffLines(current, a.proof.empty() ? current : statement + a.proof);
}

void Session::Accept() {
  if (selected_ >= static_cast<int>(run_.attempts.size())) return Note("no attempt to accept");
  const AttemptView& a = run_.attempts[selected_];
  if (a.state != AttemptState::kAccepted)
    return Note("attempt " + std::to_string(selected_ + 1) + " is " + std::string(AttemptStateName(a.state)) +
                ": only a proof Lean accepted can go into the file");
  const int t = RunTheoremIndex();
  if (t < 0) return Note("theorem " + run_.task.name + " is no longer in the buffer with the same statement");
  const lsp::Declaration d = theorems_[t];
  std::string proof = a.proof;
  if (!proof.empty() && proof.front() != ' ' && proof.front() != '\n') proof.insert(0, " ");
  std::string text = text_.substr(0, d.header_end) + proof + text_.substr(d.proof_end);
  const int first_line = TheoremFirstLine(t);
  SetText(std::move(text));
  dirty_ = true;
  MoveCursor(first_line);
  diff_visible_ = false;
  Note("accepted attempt " + std::to_string(selected_ + 1) + " into " + run_.task.name +
       " (unsaved: s or /save writes the file)");
  RequestCheck();
}

void Session::Save(std::string path) {
  if (path.empty()) path = path_;
  if (path.empty()) return Note("this buffer has no file name: /save FILE");
  requests_.push_back(SaveRequest{path, text_, version_});
  Note("saving " + path + "...");
}

void Session::AskQuit(bool force) {
  if (dirty_ && !force) return Note("unsaved changes: s saves, /quit! (or Ctrl-C again) quits without saving");
  if (run_.running) requests_.push_back(CancelRequest{});
  requests_.push_back(QuitRequest{});
}

void Session::OnKey(Key key) {
  if (key.kind == Key::kCtrlC) {
    // First Ctrl-C stops a running proof; then it quits, twice in a row when there are unsaved changes.
    const bool again = ctrl_c_armed_;
    ctrl_c_armed_ = true;
    if (run_.running) return Cancel();
    return AskQuit(again);
  }
  ctrl_c_armed_ = false;
  if (command_active_) return OnCommandKey(key);
  if (help_visible_ && (key.kind == Key::kEscape || (key.kind == Key::kChar && (key.ch == '?' || key.ch == 'q')))) {
    help_visible_ = false;
    return;
  }
  switch (key.kind) {
    case Key::kUp: return MoveCursor(cursor_ - 1);
    case Key::kDown: return MoveCursor(cursor_ + 1);
    case Key::kPageUp: return MoveCursor(cursor_ - kPageLines);
    case Key::kPageDown: return MoveCursor(cursor_ + kPageLines);
    case Key::kHome: return MoveCursor(0);
    case Key::kEnd: return MoveCursor(static_cast<int>(lines_.size()) - 1);
    case Key::kEnter: return Prove();
    case Key::kTab: return SelectAttempt(run_.attempts.empty() ? 0 : (selected_ + 1) % run_.attempts.size());
    case Key::kBackTab:
      return SelectAttempt(run_.attempts.empty() ? 0 : (selected_ + run_.attempts.size() - 1) % run_.attempts.size());
    case Key::kEscape:
      if (run_.running) return Cancel();
      if (diff_visible_)
        diff_visible_ = false;
      else
        message_.clear();
      return;
    case Key::kChar: break;
    default: return;
  }
  const char32_t c = key.ch;
  if (c >= '1' && c <= '9') return SelectAttempt(static_cast<int>(c - '1'));
  switch (c) {
    case 'p': return Prove();
    case 'n': return JumpToSorry(+1);
    case 'N': return JumpToSorry(-1);
    case 'a': return Accept();
    case 'd':
      if (run_.attempts.empty()) return Note("no attempts yet: Enter proves the theorem under the cursor");
      diff_visible_ = !diff_visible_;
      return;
    case 's': return Save("");
    case '?': help_visible_ = !help_visible_; return;
    case 'q': return AskQuit(false);
    case '/':
    case ':':
      command_active_ = true;
      command_ = "/";
      history_pos_ = static_cast<int>(history_.size());
      return;
    case 'o':
      command_active_ = true;
      command_ = "/open ";
      history_pos_ = static_cast<int>(history_.size());
      return;
    default: return;
  }
}

void Session::OnCommandKey(Key key) {
  switch (key.kind) {
    case Key::kEscape:
      command_active_ = false;
      command_.clear();
      return;
    case Key::kEnter: {
      command_active_ = false;
      std::string line = std::exchange(command_, {});
      if (Trim(line).empty() || Trim(line) == "/") return;
      if (history_.empty() || history_.back() != line) history_.push_back(line);
      if (history_.size() > kHistoryMax) history_.erase(history_.begin());
      return RunCommand(line);
    }
    case Key::kBackspace:
      PopUtf8(&command_);
      if (command_.empty()) command_active_ = false;
      return;
    case Key::kUp:
      if (history_pos_ > 0) command_ = history_[--history_pos_];
      return;
    case Key::kDown:
      if (history_pos_ < static_cast<int>(history_.size())) ++history_pos_;
      command_ = history_pos_ < static_cast<int>(history_.size()) ? history_[history_pos_] : "/";
      return;
    case Key::kChar:
      if (key.ch >= 0x20 && key.ch != 0x7F) AppendUtf8(&command_, key.ch);
      return;
    default: return;
  }
}

void Session::RunCommand(std::string_view line) {
  line = Trim(line);
  if (!line.empty() && (line.front() == '/' || line.front() == ':')) line.remove_prefix(1);
  const size_t space = line.find(' ');
  const std::string_view name = line.substr(0, space);
  const std::string_view arg = space == std::string_view::npos ? std::string_view() : Trim(line.substr(space + 1));
  if (name == "k" || name == "turns") {
    const int v = ParsePositive(arg);
    const bool is_k = name == "k";
    if (arg.empty())
      return Note(is_k ? "k = " + std::to_string(settings_.k) : "turns = " + std::to_string(settings_.turns));
    if (v < (is_k ? 1 : 0) || v > 64)
      return Note("/" + std::string(name) + ": expected a number" + (is_k ? " from 1 to 64" : " from 0 to 64") +
                  ", got '" + std::string(arg) + "'");
    (is_k ? settings_.k : settings_.turns) = v;
    return Note((is_k ? "k = " : "turns = ") + std::to_string(v) + " (from the next proof on)");
  }
  if (name == "model") {
    if (arg.empty()) return Note("model: " + status_.model + "  (/model PATH loads another)");
    if (run_.running) return Note("/model: cancel the running proof first (Esc)");
    requests_.push_back(LoadModelRequest{std::string(arg), ""});
    return Note("loading model " + std::string(arg) + "...");
  }
  if (name == "kv") {
    if (arg.empty())
      return Note("kv: " + (status_.kv_formats.empty() ? std::string("unknown") : status_.kv_formats) +
                  "  (/kv K[,V] sets the formats, e.g. /kv q8_0,iso3)");
    if (run_.running) return Note("/kv: cancel the running proof first (Esc)");
    requests_.push_back(LoadModelRequest{"", std::string(arg)});
    return Note("switching KV formats to " + std::string(arg) + "...");
  }
  if (name == "help") {
    help_visible_ = true;
    return;
  }
  if (name == "quit" || name == "q") return AskQuit(false);
  if (name == "quit!" || name == "q!") return AskQuit(true);
  if (name == "open") {
    if (arg.empty()) return Note("/open: expected a file name");
    if (dirty_) return Note("/open: unsaved changes: save first (s) or /quit! to discard them");
    if (run_.running) return Note("/open: cancel the running proof first (Esc)");
    requests_.push_back(OpenRequest{std::string(arg)});
    return Note("opening " + std::string(arg) + "...");
  }
  if (name == "save" || name == "w") return Save(std::string(arg));
  if (name == "theorem" || name == "lemma") {
    if (arg.empty()) return Note("/theorem: expected a statement, e.g. /theorem foo (n : Nat) : n + 0 = n := by sorry");
    std::string decl = std::string(name) + " " + std::string(arg);
    if (decl.find(":=") == std::string::npos) decl += " := by\n  sorry";
    std::string text = text_;
    if (!text.empty() && text.back() != '\n') text += '\n';
    if (!text.empty()) text += '\n';
    const int line = text.empty() ? 0 : static_cast<int>(SplitLines(text).size());
    const size_t before = lsp::FindDeclarations(text + decl + "\n").size();
    if (before != theorems_.size() + 1) return Note("/theorem: expected `NAME ... : TYPE := PROOF`, got: " + decl);
    SetText(text + decl + "\n");
    dirty_ = true;
    MoveCursor(line);
    RequestCheck();
    return Note("added " + theorems_.back().name + ": Enter proves it");
  }
  if (name == "prove") return Prove();
  if (name == "accept" || name == "diff") {
    if (!arg.empty()) {
      const int v = ParsePositive(arg);
      if (v < 1) return Note("/" + std::string(name) + ": expected an attempt number, got '" + std::string(arg) + "'");
      SelectAttempt(v - 1);
      if (v - 1 != selected_) return;
    }
    if (name == "accept") return Accept();
    if (run_.attempts.empty()) return Note("no attempts yet: Enter proves the theorem under the cursor");
    diff_visible_ = true;
    return;
  }
  Note("unknown command /" + std::string(name) + " (/help lists them)");
}

void Session::OnEvent(Event event) {
  std::visit([this](auto& e) { Apply(e); }, event);
}

void Session::Apply(PieceEvent& e) {
  if (e.run_id != run_.id || e.candidate < 0 || e.candidate >= static_cast<int>(run_.attempts.size())) return;
  run_.attempts[e.candidate].stream += e.piece;
  ++run_.attempts[e.candidate].streamed;
}

void Session::Apply(AttemptEvent& e) {
  if (e.run_id != run_.id || e.candidate < 0 || e.candidate >= static_cast<int>(run_.attempts.size())) return;
  AttemptView& a = run_.attempts[e.candidate];
  if (e.state == AttemptState::kGenerating && (a.state != AttemptState::kGenerating || a.turn != e.turn)) {
    a.stream.clear();
    a.streamed = 0;
  }
  a.state = e.state;
  a.turn = e.turn;
  if (e.state == AttemptState::kAccepted || e.state == AttemptState::kFailed) {
    a.proof = std::move(e.proof);
    a.reason = std::move(e.reason);
    a.tokens += e.tokens;  // the model's count replaces the streamed estimate
    a.streamed = 0;
    if (e.state == AttemptState::kAccepted && run_.attempts[selected_].state != AttemptState::kAccepted)
      selected_ = e.candidate;
  }
}

void Session::Apply(RunFinishedEvent& e) {
  if (e.run_id != run_.id) return;
  run_.running = false;
  run_.outcome = std::move(e.outcome);
  const bool cancelled = run_.outcome == "cancelled";
  for (AttemptView& a : run_.attempts) {
    if (a.state != AttemptState::kGenerating && a.state != AttemptState::kChecking && a.state != AttemptState::kWaiting)
      continue;
    a.state = cancelled ? AttemptState::kCancelled : AttemptState::kNotChecked;
    a.reason = cancelled ? "never judged: the run was cancelled" : "never judged: the run ended (" + run_.outcome + ")";
  }
  Note(run_.task.name + ": " + run_.outcome +
       (run_.outcome.rfind("proved", 0) == 0 ? "  (a accepts the proof, d shows the diff)" : ""));
}

void Session::Apply(CheckedEvent& e) {
  if (e.version != version_) return;  // an older buffer; a newer check is on its way
  checking_ = false;
  check_error_ = std::move(e.error);
  if (!e.ok) return;
  report_ = std::move(e.report);
  checked_version_ = e.version;
}

void Session::Apply(SavedEvent& e) {
  if (!e.ok) return Note("save failed: " + e.error);
  path_ = e.path;
  if (e.version == version_) dirty_ = false;
  Note("saved " + e.path);
}

void Session::Apply(OpenedEvent& e) {
  if (!e.ok) return Note("open failed: " + e.error);
  const int last_run = run_.id;
  run_ = RunView{};
  run_.id = last_run;
  Load(std::move(e.path), std::move(e.text));
  Note("opened " + path_ + " (" + std::to_string(theorems_.size()) + " theorems)");
}

void Session::Apply(StatusEvent& e) {
  std::string lean = std::move(status_.lean);
  status_ = std::move(e.status);
  if (status_.lean.empty()) status_.lean = std::move(lean);
}

void Session::Apply(LeanStateEvent& e) { status_.lean = std::move(e.lean); }

void Session::Apply(MessageEvent& e) { Note(std::move(e.text)); }

}  // namespace lr::tui
