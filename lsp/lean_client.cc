#include "lsp/lean_client.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>

#include "base/interrupt.h"
#include "lsp/jsonrpc.h"
#include "lsp/lean_text.h"
#include "lsp/utf16.h"

namespace lr::lsp {
namespace {

constexpr auto kShutdownTimeout = std::chrono::seconds(2);
constexpr auto kNotifyTimeout = std::chrono::seconds(30);
// How old a resident-memory figure may be: reading it scans /proc (about a millisecond on a busy machine), and a
// pool asks after every check.
constexpr auto kResidentMaxAge = std::chrono::milliseconds(250);

// Positions (UTF-8 columns) of `sorry` tokens outside comments, strings and char literals (lsp/lean_text.h).
std::vector<Position> FindSorries(const std::string& text) {
  std::vector<Position> out;
  int line = 0;
  size_t line_start = 0, scanned = 0;
  for (size_t offset : TokenOffsets(MaskCommentsAndStrings(text), "sorry")) {
    for (; scanned < offset; ++scanned) {
      if (text[scanned] == '\n') ++line, line_start = scanned + 1;
    }
    out.push_back({line, static_cast<int>(offset - line_start)});
  }
  return out;
}

Json PositionJson(const std::string& text, Position p) {
  return {{"line", p.line}, {"character", Utf8ToUtf16Column(LineOf(text, p.line), p.character)}};
}

Position ParsePosition(const Json& j) {
  Position p;
  if (!j.is_object()) return p;
  if (j.contains("line") && j["line"].is_number_integer()) p.line = j["line"].get<int>();
  if (j.contains("character") && j["character"].is_number_integer()) p.character = j["character"].get<int>();
  return p;
}

Range ParseRange(const Json& j) {
  if (!j.is_object()) return {};
  return {ParsePosition(j.value("start", Json())), ParsePosition(j.value("end", Json()))};
}

Range ToUtf8(const std::string& text, Range r) {
  r.start.character = Utf16ToUtf8Column(LineOf(text, r.start.line), r.start.character);
  r.end.character = Utf16ToUtf8Column(LineOf(text, r.end.line), r.end.character);
  return r;
}

Diagnostic ParseDiagnostic(const Json& j, const std::string& text) {
  Diagnostic d;
  if (!j.is_object()) return d;
  int sev = j.contains("severity") && j["severity"].is_number_integer() ? j["severity"].get<int>() : 1;
  d.severity = sev >= 1 && sev <= 4 ? static_cast<Severity>(sev) : Severity::kError;
  d.range_utf16 = ParseRange(j.value("range", Json()));
  d.range = ToUtf8(text, d.range_utf16);
  d.full_range = j.contains("fullRange") ? ToUtf8(text, ParseRange(j["fullRange"])) : d.range;
  if (j.contains("message") && j["message"].is_string()) d.message = j["message"].get<std::string>();
  if (j.contains("source") && j["source"].is_string()) d.source = j["source"].get<std::string>();
  if (j.contains("leanTags") && j["leanTags"].is_array())
    for (const Json& t : j["leanTags"])
      if (t.is_number_integer()) d.lean_tags.push_back(t.get<int>());
  if (j.contains("isSilent") && j["isSilent"].is_boolean()) d.is_silent = j["isSilent"].get<bool>();
  return d;
}

bool IsInfrastructure(const Status& s) {
  return s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kTimeout ||
         s.code() == StatusCode::kCancelled || s.code() == StatusCode::kCorrupt || s.code() == StatusCode::kIo;
}

}  // namespace

const char* SeverityName(Severity severity) {
  switch (severity) {
    case Severity::kError: return "error";
    case Severity::kWarning: return "warning";
    case Severity::kInformation: return "info";
    case Severity::kHint: return "hint";
  }
  return "error";
}

bool CheckResult::HasErrors() const {
  for (const Diagnostic& d : diagnostics)
    if (d.severity == Severity::kError) return true;
  return false;
}

bool CheckResult::UsesSorry() const {
  for (const Diagnostic& d : diagnostics)
    if (d.severity == Severity::kWarning && d.message.find("declaration uses 'sorry'") != std::string::npos)
      return true;
  return false;
}

struct LeanClient::Impl {
  struct Document {
    int version = 0;
    std::string text;
    std::vector<Json> diagnostics;       // Lean's, for `version`
    bool fatal = false;                  // Lean reported a fatalError range for `version`
    std::optional<CheckResult> checked;  // the complete result for `version` (its barrier passed)
  };

  std::string peer;
  ClientOptions options;
  std::unique_ptr<ServerProcess> process;
  std::unique_ptr<Connection> connection;
  std::atomic<bool> hung{false};            // a request timed out or was cancelled: not reused
  std::atomic<bool> worker_crashed{false};  // the last failure was a crash of Lean's file worker

  std::mutex mu;
  std::map<std::string, Document> documents;  // guarded by mu

  std::mutex rss_mu;
  Clock::time_point rss_at;   // when `rss` was measured; guarded by rss_mu
  int64_t rss = 0;            // guarded by rss_mu
  ProgressCallback progress;  // guarded by mu

  void OnNotification(const std::string& method, const Json& params);
  std::optional<Json> OnRequest(const std::string& method, const Json& params);
  Status Failure(Status s, Clock::time_point deadline);
  Result<CheckResult> Sync(const std::string& uri, const std::string& text, const Json& content_changes,
                           Clock::time_point deadline);
  Result<Goal> GoalAt(const std::string& uri, const std::string& text, Position p, GoalSite site,
                      Clock::time_point deadline);
};

void LeanClient::Impl::OnNotification(const std::string& method, const Json& params) {
  if (!params.is_object()) return;
  if (method == "textDocument/publishDiagnostics") {
    std::string uri = params.value("uri", "");
    std::lock_guard<std::mutex> lock(mu);
    auto it = documents.find(uri);
    if (it == documents.end()) return;
    Document& doc = it->second;
    // A batch for another version is stale (or early): it says nothing about the text being checked.
    if (params.contains("version") && params["version"].is_number_integer() &&
        params["version"].get<int>() != doc.version)
      return;
    bool incremental = params.value("isIncremental", false);
    if (!incremental) doc.diagnostics.clear();
    if (params.contains("diagnostics") && params["diagnostics"].is_array())
      for (const Json& d : params["diagnostics"]) doc.diagnostics.push_back(d);
    return;
  }
  if (method == "$/lean/fileProgress") {
    const Json& td = params["textDocument"];
    if (!td.is_object()) return;
    std::string uri = td.value("uri", "");
    int version = td.contains("version") && td["version"].is_number_integer() ? td["version"].get<int>() : -1;
    std::vector<Range> ranges;
    ProgressCallback callback;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = documents.find(uri);
      if (it == documents.end() || it->second.version != version) return;
      if (params.contains("processing") && params["processing"].is_array())
        for (const Json& p : params["processing"]) {
          if (!p.is_object()) continue;
          if (p.value("kind", 1) == 2) it->second.fatal = true;
          ranges.push_back(ToUtf8(it->second.text, ParseRange(p.value("range", Json()))));
        }
      callback = progress;
    }
    if (callback) callback(uri, version, ranges);
  }
}

std::optional<Json> LeanClient::Impl::OnRequest(const std::string& method, const Json& params) {
  if (method == "client/registerCapability" || method == "client/unregisterCapability" ||
      method == "window/workDoneProgress/create")
    return Json();
  if (method == "workspace/configuration") {
    Json out = Json::array();
    if (params.is_object() && params.contains("items") && params["items"].is_array())
      for (size_t i = 0; i < params["items"].size(); ++i) out.push_back(Json());
    return out;
  }
  return std::nullopt;
}

// Adds what the process and its stderr say to an infrastructure failure, and marks a hung server or a worker crash.
Status LeanClient::Impl::Failure(Status s, Clock::time_point deadline) {
  if (s.code() == StatusCode::kTimeout || s.code() == StatusCode::kCancelled) hung = true;
  if (s.message().find(kWorkerCrashText) != std::string::npos) worker_crashed = true;
  // A server whose output ended is usually on its way out: give it a moment (within the deadline), so that its exit
  // status is reported.
  if (s.code() == StatusCode::kUnavailable && !connection->broken().ok()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    process->WaitForExit(std::clamp(left, std::chrono::milliseconds(0), std::chrono::milliseconds(1000)));
  }
  if (!process->Running()) worker_crashed = false;  // the server itself died
  std::string detail = " [server " + process->ExitDescription();
  std::string tail = connection->StderrTail();
  if (!tail.empty()) {
    if (tail.size() > 400) tail = "..." + tail.substr(tail.size() - 400);
    detail += "; stderr: " + tail;
  }
  detail += "]";
  return Status(s.code(), s.message() + detail);
}

LeanClient::LeanClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<LeanClient>> LeanClient::Start(const ProcessSpec& spec, const ClientOptions& options,
                                                      Clock::time_point deadline, const std::atomic<bool>* cancel) {
  if (cancel != nullptr && cancel->load()) return Cancelled("Lean server start cancelled");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->peer = "Lean server '" + (spec.argv.empty() ? std::string() : spec.argv[0]) + "'";
  auto process = ServerProcess::Spawn(spec);
  if (!process.ok()) return process.status();
  impl->process = std::move(*process);
  impl->peer += " (pid " + std::to_string(impl->process->pid()) + ")";
  Impl* raw = impl.get();
  impl->connection = std::make_unique<Connection>(
      impl->peer, impl->process->stdin_fd(), impl->process->stdout_fd(), impl->process->stderr_fd(),
      [raw](const std::string& m, const Json& p) { raw->OnNotification(m, p); },
      [raw](const std::string& m, const Json& p) { return raw->OnRequest(m, p); });
  impl->connection->SetCancel(cancel);
  std::unique_ptr<LeanClient> client(new LeanClient(std::move(impl)));

  std::string root = spec.working_dir.empty() ? std::string() : spec.working_dir;
  Json params = {{"processId", static_cast<int>(::getpid())},
                 {"rootUri", root.empty() ? Json() : Json(PathToUri(root))},
                 {"capabilities",
                  {{"textDocument", {{"publishDiagnostics", {{"relatedInformation", true}}}}},
                   {"window", {{"workDoneProgress", true}}}}},
                 {"initializationOptions", {{"editDelay", 0}, {"hasWidgets", false}}}};
  deadline = std::min(deadline, Clock::now() + options.initialize_timeout);
  auto init = client->impl_->connection->Request("initialize", params, deadline);
  if (!init.ok()) {
    const StatusCode code = init.status().code();
    Status s = code == StatusCode::kTimeout || code == StatusCode::kCancelled ? init.status()
                                                                              : Unavailable(init.status().message());
    return client->impl_->Failure(s.WithContext("initialize"), deadline);
  }
  Status s = client->impl_->connection->Notify("initialized", Json::object(), deadline);
  if (!s.ok()) return client->impl_->Failure(Unavailable(s.message()).WithContext("initialized"), deadline);
  return client;
}

LeanClient::~LeanClient() {
  bool alive = healthy() && !Interrupted();
  if (alive) {
    auto deadline = Clock::now() + kShutdownTimeout;
    if (impl_->connection->Request("shutdown", Json(), deadline).ok())
      (void)impl_->connection->Notify("exit", Json(), deadline);
  }
  impl_->connection.reset();  // stops the I/O thread before the pipes close
  impl_->process->Stop(std::chrono::milliseconds(alive ? 500 : 0));
}

bool LeanClient::healthy() const {
  return !impl_->hung && impl_->connection && impl_->connection->broken().ok() && impl_->process->Running();
}

int64_t LeanClient::ResidentBytes() const {
  std::lock_guard<std::mutex> lock(impl_->rss_mu);
  auto now = Clock::now();
  if (impl_->rss_at == Clock::time_point() || now - impl_->rss_at >= kResidentMaxAge) {
    impl_->rss = impl_->process->GroupResidentBytes();
    impl_->rss_at = now;
  }
  return impl_->rss;
}

std::string LeanClient::StderrTail() const { return impl_->connection ? impl_->connection->StderrTail() : ""; }

void LeanClient::Kill() { impl_->process->Kill(); }

void LeanClient::SetCancel(const std::atomic<bool>* cancel) { impl_->connection->SetCancel(cancel); }

bool LeanClient::worker_crashed() const { return impl_->worker_crashed; }

void LeanClient::SetProgressCallback(ProgressCallback callback) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->progress = std::move(callback);
}

Result<CheckResult> LeanClient::Impl::Sync(const std::string& uri, const std::string& text, const Json& content_changes,
                                           Clock::time_point deadline) {
  if (hung) return Unavailable(peer + " hung on an earlier request and is not reused");
  worker_crashed = false;
  int version;
  bool opened;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = documents.find(uri);
    // The same text again: Lean's answer for this version is final (its barrier passed), so it stands.
    if (it != documents.end() && it->second.checked && it->second.text == text) {
      CheckResult again = *it->second.checked;
      again.elapsed_ms = 0;
      return again;
    }
    opened = it == documents.end();
    Document& doc = documents[uri];
    version = ++doc.version;
    doc.text = text;
    doc.diagnostics.clear();
    doc.fatal = false;
    doc.checked.reset();
  }
  auto start = Clock::now();
  Status sent;
  if (opened) {
    sent = connection->Notify(
        "textDocument/didOpen",
        {{"textDocument", {{"uri", uri}, {"languageId", "lean4"}, {"version", version}, {"text", text}}},
         {"dependencyBuildMode", options.dependency_build_mode}},
        deadline);
  } else {
    sent = connection->Notify(
        "textDocument/didChange",
        {{"textDocument", {{"uri", uri}, {"version", version}}}, {"contentChanges", content_changes}}, deadline);
  }
  if (!sent.ok()) return Failure(sent, deadline);
  // The barrier: diagnostics for `version` are complete once Lean answers this request.
  auto barrier = connection->Request("textDocument/waitForDiagnostics", {{"uri", uri}, {"version", version}}, deadline);
  if (!barrier.ok())
    return Failure(barrier.status().WithContext(uri + " version " + std::to_string(version)), deadline);
  CheckResult result;
  result.elapsed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  {
    std::lock_guard<std::mutex> lock(mu);
    const Document& doc = documents[uri];
    if (doc.fatal)
      return Failure(
          Unavailable(std::string(kWorkerCrashText) + ": the worker for " + uri +
                      " reported a fatal error (fileProgress fatalError) on version " + std::to_string(version)),
          deadline);
    for (const Json& d : doc.diagnostics) result.diagnostics.push_back(ParseDiagnostic(d, text));
  }
  for (Position p : FindSorries(text)) {
    LR_ASSIGN_OR_RETURN(Goal g, GoalAt(uri, text, p, GoalSite::kSorry, deadline));
    result.goals.push_back(std::move(g));
  }
  for (const Diagnostic& d : result.diagnostics) {
    if (d.severity != Severity::kError) continue;
    LR_ASSIGN_OR_RETURN(Goal g, GoalAt(uri, text, d.range.start, GoalSite::kError, deadline));
    result.goals.push_back(std::move(g));
  }
  result.complete = true;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = documents.find(uri);
    if (it != documents.end() && it->second.version == version) it->second.checked = result;
  }
  return result;
}

Result<Goal> LeanClient::Impl::GoalAt(const std::string& uri, const std::string& text, Position p, GoalSite site,
                                      Clock::time_point deadline) {
  Goal goal;
  goal.site = site;
  goal.position = p;
  Json params = {{"textDocument", {{"uri", uri}}}, {"position", PositionJson(text, p)}};
  auto plain = connection->Request("$/lean/plainGoal", params, deadline);
  if (!plain.ok()) {
    if (IsInfrastructure(plain.status())) return Failure(plain.status().WithContext("$/lean/plainGoal"), deadline);
    return goal;  // Lean has no goal there (e.g. an error answer for a position it has no snapshot for)
  }
  if (plain->is_object()) {
    goal.in_tactic_block = true;
    if (plain->contains("goals") && (*plain)["goals"].is_array())
      for (const Json& g : (*plain)["goals"])
        if (g.is_string()) goal.goals.push_back(g.get<std::string>());
    return goal;
  }
  auto term = connection->Request("$/lean/plainTermGoal", params, deadline);
  if (!term.ok()) {
    if (IsInfrastructure(term.status())) return Failure(term.status().WithContext("$/lean/plainTermGoal"), deadline);
    return goal;
  }
  if (term->is_object() && term->contains("goal") && (*term)["goal"].is_string())
    goal.term_goal = (*term)["goal"].get<std::string>();
  return goal;
}

Result<CheckResult> LeanClient::Check(const std::string& uri, const std::string& text, Clock::time_point deadline) {
  return impl_->Sync(uri, text, Json::array({{{"text", text}}}), deadline);
}

Result<CheckResult> LeanClient::Edit(const std::string& uri, Range range, const std::string& new_text,
                                     Clock::time_point deadline) {
  std::string text;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->documents.find(uri);
    if (it == impl_->documents.end()) return InvalidArgument("Edit of " + uri + ", which is not open (Check it first)");
    text = it->second.text;
  }
  Json change = {{"range", {{"start", PositionJson(text, range.start)}, {"end", PositionJson(text, range.end)}}},
                 {"text", new_text}};
  size_t a = OffsetOf(text, range.start.line, range.start.character);
  size_t b = OffsetOf(text, range.end.line, range.end.character);
  if (b < a) return InvalidArgument("Edit of " + uri + ": the range ends before it starts");
  text.replace(a, b - a, new_text);
  return impl_->Sync(uri, text, Json::array({change}), deadline);
}

Result<Goal> LeanClient::GoalAt(const std::string& uri, Position position, Clock::time_point deadline) {
  std::string text;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->documents.find(uri);
    if (it == impl_->documents.end())
      return InvalidArgument("GoalAt in " + uri + ", which is not open (Check it first)");
    text = it->second.text;
  }
  return impl_->GoalAt(uri, text, position, GoalSite::kRequested, deadline);
}

Result<std::vector<AttemptResult>> LeanClient::MultiAttempt(const std::string& uri, const std::string& text, int line,
                                                            const std::vector<std::string>& snippets,
                                                            Clock::time_point deadline) {
  int line_count = 1;
  for (char c : text) line_count += c == '\n';
  std::string_view original = LineOf(text, line);
  if (line < 0 || line >= line_count)
    return InvalidArgument("MultiAttempt: line " + std::to_string(line) + " is past the end of the text");
  std::string indent(original.substr(0, original.find_first_not_of(" \t") == std::string_view::npos
                                            ? original.size()
                                            : original.find_first_not_of(" \t")));
  size_t line_begin = OffsetOf(text, line, 0);
  size_t line_end = line_begin + original.size();
  std::vector<AttemptResult> out;
  for (const std::string& snippet : snippets) {
    std::string replacement;
    int lines = 1;
    for (size_t i = 0; i < snippet.size(); ++i) {
      if (i == 0 || snippet[i - 1] == '\n') replacement += indent;
      replacement += snippet[i];
      if (snippet[i] == '\n') ++lines;
    }
    if (snippet.empty()) replacement = indent;
    std::string attempt = text.substr(0, line_begin) + replacement + text.substr(line_end);
    LR_ASSIGN_OR_RETURN(CheckResult checked, Check(uri, attempt, deadline));
    AttemptResult r;
    r.snippet = snippet;
    int last = line + lines - 1;
    for (Diagnostic& d : checked.diagnostics)
      if (d.range.start.line <= last && d.range.end.line >= line) r.diagnostics.push_back(std::move(d));
    Position end{last, static_cast<int>(LineOf(attempt, last).size())};
    LR_ASSIGN_OR_RETURN(r.goal_after, impl_->GoalAt(uri, attempt, end, GoalSite::kRequested, deadline));
    out.push_back(std::move(r));
  }
  return out;
}

Result<std::string> LeanClient::Hover(const std::string& uri, Position position, Clock::time_point deadline) {
  std::string text;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->documents.find(uri);
    if (it == impl_->documents.end())
      return InvalidArgument("Hover in " + uri + ", which is not open (Check it first)");
    text = it->second.text;
  }
  auto r = impl_->connection->Request(
      "textDocument/hover", {{"textDocument", {{"uri", uri}}}, {"position", PositionJson(text, position)}}, deadline);
  if (!r.ok()) return IsInfrastructure(r.status()) ? impl_->Failure(r.status(), deadline) : r.status();
  if (!r->is_object() || !r->contains("contents")) return std::string();
  const Json& c = (*r)["contents"];
  if (c.is_string()) return c.get<std::string>();
  if (c.is_object() && c.contains("value") && c["value"].is_string()) return c["value"].get<std::string>();
  std::string joined;
  if (c.is_array())
    for (const Json& part : c) {
      if (!joined.empty()) joined += "\n";
      joined += part.is_string() ? part.get<std::string>() : part.value("value", "");
    }
  return joined;
}

Result<Json> LeanClient::Query(const std::string& uri, const std::string& method, std::optional<Position> position,
                               Clock::time_point deadline) {
  std::string text;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->documents.find(uri);
    if (it == impl_->documents.end())
      return InvalidArgument(method + " in " + uri + ", which is not open (Check it first)");
    text = it->second.text;
  }
  Json params = {{"textDocument", {{"uri", uri}}}};
  if (position) params["position"] = PositionJson(text, *position);
  auto r = impl_->connection->Request(method, params, deadline);
  if (!r.ok() && IsInfrastructure(r.status())) return impl_->Failure(r.status().WithContext(method), deadline);
  return r;
}

Status LeanClient::Close(const std::string& uri) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->documents.erase(uri) == 0) return Status::Ok();
  }
  return impl_->connection->Notify("textDocument/didClose", {{"textDocument", {{"uri", uri}}}},
                                   Clock::now() + kNotifyTimeout);
}

std::string PathToUri(const std::string& absolute_path) {
  std::string uri = "file://";
  for (unsigned char c : absolute_path) {
    bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '/' || c == '-' ||
                c == '_' || c == '.' || c == '~';
    if (keep) {
      uri += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      uri += buf;
    }
  }
  return uri;
}

Result<std::string> UriToPath(const std::string& uri) {
  if (uri.rfind("file://", 0) != 0) return InvalidArgument("URI '" + uri + "' is not a file:// URI");
  std::string out;
  for (size_t i = 7; i < uri.size(); ++i) {
    if (uri[i] != '%') {
      out += uri[i];
      continue;
    }
    auto hex = [](char c) {
      return c >= '0' && c <= '9'   ? c - '0'
             : c >= 'a' && c <= 'f' ? c - 'a' + 10
             : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                    : -1;
    };
    if (i + 2 >= uri.size() || hex(uri[i + 1]) < 0 || hex(uri[i + 2]) < 0)
      return InvalidArgument("URI '" + uri + "' has a bad percent escape at byte " + std::to_string(i));
    out += static_cast<char>(hex(uri[i + 1]) * 16 + hex(uri[i + 2]));
    i += 2;
  }
  return out;
}

}  // namespace lr::lsp
