#include "agent/tools.h"

#include <fnmatch.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "agent/local_search.h"
#include "base/file.h"
#include "lsp/utf16.h"

namespace lr::agent {
namespace fs = std::filesystem;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// A diagnostic as lean-lsp-mcp gives it: 1-based line and column (UTF-16), severity by name, Lean's tags by name.
Json DiagnosticJson(const lsp::Diagnostic& d) {
  Json j = {{"severity", lsp::SeverityName(d.severity)},
            {"message", d.message},
            {"line", d.range_utf16.start.line + 1},
            {"column", d.range_utf16.start.character + 1}};
  Json tags = Json::array();
  for (int t : d.lean_tags) {
    if (t == static_cast<int>(lsp::LeanTag::kUnsolvedGoals)) tags.push_back("unsolvedGoals");
    if (t == static_cast<int>(lsp::LeanTag::kGoalsAccomplished)) tags.push_back("goalsAccomplished");
  }
  if (!tags.empty()) j["lean_tags"] = tags;
  return j;
}

Json DiagnosticsJson(const std::vector<lsp::Diagnostic>& ds, int first_line = 0, int last_line = 1 << 30) {
  Json out = Json::array();
  for (const lsp::Diagnostic& d : ds)
    if (!d.is_silent && d.range.start.line + 1 >= first_line && d.range.start.line + 1 <= last_line)
      out.push_back(DiagnosticJson(d));
  return out;
}

int LineCount(const std::string& text) {
  if (text.empty()) return 0;
  int n = static_cast<int>(std::count(text.begin(), text.end(), '\n'));
  return text.back() == '\n' ? n : n + 1;
}

// Lean's markdown code fences removed ("```lean\nX\n```" -> "X").
std::string StripFences(std::string s) {
  for (const char* fence : {"```lean\n", "\n```", "```"}) {
    for (size_t k = s.find(fence); k != std::string::npos; k = s.find(fence)) s.erase(k, std::strlen(fence));
  }
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  while (!s.empty() && s.front() == '\n') s.erase(0, 1);
  return s;
}

bool IsIdentByte(char c) {
  unsigned char u = static_cast<unsigned char>(c);
  return std::isalnum(u) || c == '_' || c == '\'' || c == '.' || c == '!' || c == '?' || u >= 0x80;
}

// The 1-based `line` of `text`, or kInvalidArgument naming the file's length.
Result<std::string> LineText(const std::string& text, int line, const std::string& file) {
  int count = LineCount(text);
  if (line < 1 || line > count)
    return InvalidArgument("line " + std::to_string(line) + " is out of range: " + file + " has " +
                           std::to_string(count) + " lines");
  std::string s(lsp::LineOf(text, line - 1));
  if (!s.empty() && s.back() == '\r') s.pop_back();
  return s;
}

// A 1-based UTF-16 column of `line_text` as a 0-based UTF-8 byte column.
int ByteColumn(const std::string& line_text, int column) {
  return lsp::Utf16ToUtf8Column(line_text, std::max(0, column - 1));
}

Json GoalsJson(const Result<Json>& plain) {
  if (!plain.ok() || !plain->is_object() || !plain->contains("goals") || !(*plain)["goals"].is_array()) return Json();
  Json out = Json::array();
  for (const Json& g : (*plain)["goals"])
    if (g.is_string()) out.push_back(g);
  return out;
}

// An LSP failure that a query may shrug off (Lean answered with an error: nothing there) versus one that must stop
// the call (the server is gone or hung).
bool IsInfrastructure(const Status& s) {
  return s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kTimeout || s.code() == StatusCode::kCorrupt ||
         s.code() == StatusCode::kIo;
}

const char* CompletionKindName(int kind) {
  static const char* kNames[] = {"",         "text",      "method", "function", "constructor",  "field",  "variable",
                                 "class",    "interface", "module", "property", "unit",         "value",  "enum",
                                 "keyword",  "snippet",   "color",  "file",     "reference",    "folder", "enumMember",
                                 "constant", "struct",    "event",  "operator", "typeParameter"};
  return kind >= 1 && kind <= 25 ? kNames[kind] : "";
}

// lean-lsp-mcp's outline kinds, from the declaration keyword at the start of a symbol's range.
std::string OutlineKind(const std::string& line_text) {
  static const std::pair<const char*, const char*> kKinds[] = {
      {"theorem", "Thm"},       {"lemma", "Thm"},        {"def", "Def"},     {"abbrev", "Def"},
      {"instance", "Instance"}, {"structure", "Struct"}, {"class", "Class"}, {"inductive", "Inductive"},
      {"namespace", "Ns"},      {"section", "Section"},  {"example", "Ex"},  {"axiom", "Axiom"},
      {"opaque", "Opaque"}};
  std::istringstream words(line_text);
  std::string w;
  while (words >> w) {
    for (const auto& [kw, kind] : kKinds)
      if (w == kw) return kind;
    if (w.rfind("@[", 0) != 0 && w != "private" && w != "protected" && w != "noncomputable" && w != "partial" &&
        w != "unsafe" && w != "nonrec" && w.back() != ']')
      break;
  }
  return "Decl";
}

// Runs `argv` in `dir`, calling `on_line` for each line of its output (stdout and stderr merged), until it exits,
// `deadline` passes or `cancel` is set (both kill its process group). Returns the exit status.
Result<int> RunProcess(const std::vector<std::string>& argv, const std::string& dir, Clock::time_point deadline,
                       const std::atomic<bool>* cancel, const std::function<void(const std::string&)>& on_line) {
  lsp::ProcessSpec spec;
  spec.argv = argv;
  spec.working_dir = dir;
  LR_ASSIGN_OR_RETURN(std::unique_ptr<lsp::ServerProcess> process, lsp::ServerProcess::Spawn(spec));
  ::close(process->stdin_fd());
  std::string pending[2];
  bool open[2] = {true, true};
  int fds[2] = {process->stdout_fd(), process->stderr_fd()};
  while (open[0] || open[1]) {
    if (cancel != nullptr && cancel->load()) {
      process->Kill();
      return Cancelled("`" + argv[0] + "` cancelled");
    }
    if (Clock::now() >= deadline) {
      process->Kill();
      return Timeout("`" + argv[0] + "` did not finish before its deadline");
    }
    pollfd p[2];
    int n = 0;
    int which[2];
    for (int k = 0; k < 2; ++k)
      if (open[k]) p[n] = {fds[k], POLLIN, 0}, which[n++] = k;
    if (::poll(p, n, 100) < 0 && errno != EINTR) return IoError("poll on `" + argv[0] + "`'s output failed");
    for (int i = 0; i < n; ++i) {
      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[8192];
      ssize_t got = ::read(p[i].fd, buf, sizeof buf);
      int k = which[i];
      if (got <= 0) {
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        open[k] = false;
        if (!pending[k].empty()) on_line(pending[k]);
        continue;
      }
      pending[k].append(buf, static_cast<size_t>(got));
      for (size_t nl = pending[k].find('\n'); nl != std::string::npos; nl = pending[k].find('\n')) {
        on_line(pending[k].substr(0, nl));
        pending[k].erase(0, nl + 1);
      }
    }
  }
  while (process->Running()) {
    if (Clock::now() >= deadline) {
      process->Kill();
      return Timeout("`" + argv[0] + "` did not exit before its deadline");
    }
    ::usleep(2000);
  }
  std::string how = process->ExitDescription();
  if (how.rfind("exited with status ", 0) == 0) return std::stoi(how.substr(19));
  return -1;
}

// Lake's progress lines, "[n/m] Building Foo (1.2s)": n, m and the message without its timing.
bool ParseBuildProgress(const std::string& line, double* done, double* total, std::string* message) {
  const char* kDigits = "0123456789";
  for (size_t open = line.find('['); open != std::string::npos; open = line.find('[', open + 1)) {
    size_t slash = line.find('/', open), close = line.find(']', open);
    if (slash == std::string::npos || close == std::string::npos || slash > close) continue;
    std::string a = line.substr(open + 1, slash - open - 1), b = line.substr(slash + 1, close - slash - 1);
    if (a.empty() || b.empty() || a.find_first_not_of(kDigits) != std::string::npos ||
        b.find_first_not_of(kDigits) != std::string::npos)
      continue;
    *done = std::stod(a);
    *total = std::stod(b);
    std::string rest = line.substr(close + 1);
    rest.erase(0, rest.find_first_not_of(" \t") == std::string::npos ? rest.size() : rest.find_first_not_of(" \t"));
    size_t timing = rest.rfind(" (");
    if (timing != std::string::npos && rest.size() > timing + 3 && rest.compare(rest.size() - 2, 2, "s)") == 0)
      rest.erase(timing);
    *message = rest;
    return true;
  }
  return false;
}

Json StringProp(const char* description) { return {{"type", "string"}, {"description", description}}; }
Json IntProp(const char* description, int minimum) {
  return {{"type", "integer"}, {"description", description}, {"minimum", minimum}};
}
Json Schema(Json properties, std::vector<std::string> required) {
  return {{"type", "object"},
          {"properties", std::move(properties)},
          {"required", required},
          {"additionalProperties", false}};
}

}  // namespace

Status ValidateArguments(const Json& schema, const Json& arguments) {
  if (!arguments.is_object()) return InvalidArgument("the arguments must be a JSON object");
  const Json& props = schema["properties"];
  for (const Json& r : schema.value("required", Json::array()))
    if (!arguments.contains(r.get<std::string>()))
      return InvalidArgument("missing required argument `" + r.get<std::string>() + "`");
  for (auto it = arguments.begin(); it != arguments.end(); ++it) {
    if (!props.contains(it.key())) {
      std::string known;
      for (auto p = props.begin(); p != props.end(); ++p) known += (known.empty() ? "" : ", ") + p.key();
      return InvalidArgument("unknown argument `" + it.key() + "` (expected: " + known + ")");
    }
    const Json& p = props[it.key()];
    const std::string type = p.value("type", "");
    const Json& v = it.value();
    bool ok = (type == "string" && v.is_string()) || (type == "integer" && v.is_number_integer()) ||
              (type == "boolean" && v.is_boolean()) || (type == "array" && v.is_array());
    if (!ok) return InvalidArgument("argument `" + it.key() + "` must be of type " + type + ", got " + Dump(v));
    if (type == "integer" && p.contains("minimum") && v.get<long>() < p["minimum"].get<long>())
      return InvalidArgument("argument `" + it.key() + "` must be at least " + Dump(p["minimum"]) + ", got " + Dump(v));
    if (type == "array") {
      for (const Json& e : v)
        if (!e.is_string()) return InvalidArgument("argument `" + it.key() + "` must hold strings, got " + Dump(e));
      if (p.contains("minItems") && v.size() < p["minItems"].get<size_t>())
        return InvalidArgument("argument `" + it.key() + "` needs at least " + Dump(p["minItems"]) + " items");
    }
  }
  return Status::Ok();
}

ToolBox::ToolBox(lsp::ServerPool& pool, WorkingCopy& copy, ToolsOptions options)
    : pool_(pool), copy_(copy), options_(std::move(options)) {
  RegisterLeanTools();
  RegisterRepositoryTools();
}

void ToolBox::Register(const char* name, const char* description, Json schema, Handler handler) {
  definitions_.push_back({name, description, std::move(schema)});
  handlers_.push_back(std::move(handler));
}

std::vector<ToolSpec> ToolBox::Specs() const {
  std::vector<ToolSpec> out;
  for (const ToolDefinition& d : definitions_) out.push_back({d.name, d.description, Dump(d.input_schema)});
  return out;
}

ToolOutcome ToolBox::Call(const std::string& name, const std::string& arguments_json, const ToolCallContext& context) {
  auto error = [](const std::string& message) { return ToolOutcome{true, Json(), message}; };
  size_t index = 0;
  while (index < definitions_.size() && definitions_[index].name != name) ++index;
  if (index == definitions_.size()) {
    std::string known;
    for (const ToolDefinition& d : definitions_) known += (known.empty() ? "" : ", ") + d.name;
    return error("unknown tool '" + name + "' (tools: " + known + ")");
  }
  Json args = Json::parse(arguments_json.empty() ? "{}" : arguments_json, nullptr, false);
  if (args.is_discarded()) return error(name + ": the arguments are not valid JSON: " + arguments_json);
  Status valid = ValidateArguments(definitions_[index].input_schema, args);
  if (!valid.ok()) return error(name + ": " + valid.message());
  if (context.cancel != nullptr && context.cancel->load()) return error(name + ": cancelled");
  Result<Json> result = handlers_[index](args, context);
  if (!result.ok()) return error(name + ": " + result.status().message());
  return {false, *result, Dump(*result)};
}

Result<std::pair<std::string, std::string>> ToolBox::LeanFile(const Json& args) const {
  LR_ASSIGN_OR_RETURN(std::string path, copy_.Resolve(args["file_path"].get<std::string>()));
  if (fs::path(path).extension() != ".lean")
    return InvalidArgument(copy_.Relative(path) + " is not a Lean file (expected a .lean path)");
  LR_ASSIGN_OR_RETURN(std::string text, copy_.Read(path));
  return std::make_pair(path, std::move(text));
}

Result<lsp::CheckResult> ToolBox::CheckThen(const std::string& path, const std::string& text,
                                            const lsp::ServerPool::DocumentQuery& query) {
  lsp::CheckRequest request;
  request.project_root = copy_.root();
  request.path = path;
  request.text = text;
  request.timeout = std::chrono::milliseconds(static_cast<int64_t>(options_.lean_timeout_seconds * 1000));
  ++lean_checks_;
  return pool_.CheckThen(request, query);
}

std::vector<std::string> ToolBox::SearchRoots() {
  std::lock_guard<std::mutex> lock(roots_mu_);
  if (!roots_known_) {
    roots_known_ = true;
    search_roots_ = options_.search_roots;
    if (search_roots_.empty() && lsp::FindOnPath("lean")) {
      std::string prefix;
      auto rc = RunProcess({"lean", "--print-prefix"}, copy_.root(), Clock::now() + std::chrono::seconds(30), nullptr,
                           [&](const std::string& line) {
                             if (prefix.empty()) prefix = line;
                           });
      if (rc.ok() && *rc == 0 && !prefix.empty()) search_roots_.push_back(prefix + "/src/lean");
    }
  }
  std::vector<std::string> roots = {copy_.root()};
  roots.insert(roots.end(), search_roots_.begin(), search_roots_.end());
  return roots;
}

void ToolBox::RegisterLeanTools() {
  const Json file_path = StringProp("Path to the Lean file (absolute, or relative to the project root)");
  const Json line = IntProp("Line number (1-indexed)", 1);

  Register("lean_file_outline", "Get imports and declarations with type signatures. Token-efficient.",
           Schema({{"file_path", file_path}}, {"file_path"}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             LR_ASSIGN_OR_RETURN(auto file, LeanFile(args));
             const std::string& text = file.second;
             Json declarations = Json::array();
             // Lean's DocumentSymbol tree, with each symbol's signature from hover at its name.
             std::function<Result<Json>(lsp::LeanClient&, const std::string&, const Json&, Clock::time_point)> entries =
                 [&](lsp::LeanClient& c, const std::string& uri, const Json& symbols,
                     Clock::time_point deadline) -> Result<Json> {
               Json out = Json::array();
               if (!symbols.is_array()) return out;
               for (const Json& s : symbols) {
                 if (!s.is_object() || !s.contains("range")) continue;
                 int start = s["range"]["start"].value("line", 0), end = s["range"]["end"].value("line", 0);
                 Json e = {{"name", s.value("name", "")}, {"kind", OutlineKind(std::string(lsp::LineOf(text, start)))},
                           {"start_line", start + 1},     {"end_line", end + 1},
                           {"type_signature", Json()},    {"children", Json::array()}};
                 const Json& sel = s.contains("selectionRange") ? s["selectionRange"] : s["range"];
                 int sel_line = sel["start"].value("line", 0);
                 lsp::Position at{
                     sel_line, lsp::Utf16ToUtf8Column(lsp::LineOf(text, sel_line), sel["start"].value("character", 0))};
                 auto hover = c.Hover(uri, at, deadline);
                 if (!hover.ok() && IsInfrastructure(hover.status())) return hover.status();
                 if (hover.ok() && !hover->empty()) e["type_signature"] = StripFences(*hover);
                 if (s.contains("children")) {
                   LR_ASSIGN_OR_RETURN(e["children"], entries(c, uri, s["children"], deadline));
                 }
                 out.push_back(std::move(e));
               }
               return out;
             };
             auto checked = CheckThen(
                 file.first, text,
                 [&](lsp::LeanClient& c, const std::string& uri, const lsp::CheckResult&, Clock::time_point d) {
                   auto symbols = c.Query(uri, "textDocument/documentSymbol", std::nullopt, d);
                   if (!symbols.ok()) return IsInfrastructure(symbols.status()) ? symbols.status() : Status::Ok();
                   auto e = entries(c, uri, *symbols, d);
                   if (!e.ok()) return e.status();
                   declarations = std::move(*e);
                   return Status::Ok();
                 });
             if (!checked.ok()) return checked.status();
             Json imports = Json::array();
             std::istringstream header(lsp::ImportHeader(text));
             for (std::string l; std::getline(header, l);)
               if (l.rfind("import ", 0) == 0) imports.push_back(l.substr(7));
             return Json{{"imports", imports}, {"declarations", declarations}};
           });

  Register("lean_diagnostic_messages",
           "Get compiler diagnostics (errors, warnings, infos) for a Lean file, optionally for a line range or one "
           "declaration.",
           Schema({{"file_path", file_path},
                   {"start_line", IntProp("Filter from line", 1)},
                   {"end_line", IntProp("Filter to line", 1)},
                   {"declaration_name", StringProp("Filter to declaration")}},
                  {"file_path"}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             LR_ASSIGN_OR_RETURN(auto file, LeanFile(args));
             int first = args.value("start_line", 1), last = args.value("end_line", 1 << 30);
             std::string declaration = args.value("declaration_name", "");
             bool found = declaration.empty();
             auto checked = CheckThen(
                 file.first, file.second,
                 [&](lsp::LeanClient& c, const std::string& uri, const lsp::CheckResult&, Clock::time_point d) {
                   if (declaration.empty()) return Status::Ok();
                   auto symbols = c.Query(uri, "textDocument/documentSymbol", std::nullopt, d);
                   if (!symbols.ok()) return IsInfrastructure(symbols.status()) ? symbols.status() : Status::Ok();
                   std::function<void(const Json&)> find = [&](const Json& list) {
                     if (!list.is_array()) return;
                     for (const Json& s : list) {
                       if (!s.is_object()) continue;
                       std::string name = s.value("name", "");
                       if (name == declaration ||
                           (name.size() > declaration.size() &&
                            name.compare(name.size() - declaration.size(), declaration.size(), declaration) == 0 &&
                            name[name.size() - declaration.size() - 1] == '.')) {
                         found = true;
                         first = s["range"]["start"].value("line", 0) + 1;
                         last = s["range"]["end"].value("line", 0) + 1;
                         return;
                       }
                       if (s.contains("children")) find(s["children"]);
                     }
                   };
                   find(*symbols);
                   return Status::Ok();
                 });
             if (!checked.ok()) return checked.status();
             if (!found)
               return NotFound("declaration '" + declaration + "' not found in " + copy_.Relative(file.first));
             Json items = DiagnosticsJson(checked->diagnostics, first, last);
             bool success = true;
             for (const Json& i : items) success = success && i["severity"] != "error";
             return Json{{"success", success}, {"items", items}, {"failed_dependencies", Json::array()}};
           });

  Register("lean_goal",
           "Get proof goals at a position. Omit column to see goals_before (line start) and goals_after (line end), "
           "showing how the tactic transforms the state. An empty list means no goals: the proof is complete there.",
           Schema({{"file_path", file_path},
                   {"line", line},
                   {"column", IntProp("Column (1-indexed). Omit for before/after", 1)}},
                  {"file_path", "line"}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             LR_ASSIGN_OR_RETURN(auto file, LeanFile(args));
             const int l = args["line"].get<int>();
             LR_ASSIGN_OR_RETURN(std::string line_text, LineText(file.second, l, copy_.Relative(file.first)));
             Json out = {{"line_context", line_text}};
             auto checked = CheckThen(
                 file.first, file.second,
                 [&](lsp::LeanClient& c, const std::string& uri, const lsp::CheckResult&, Clock::time_point d) {
                   auto at = [&](int byte_col) -> Result<Json> {
                     auto plain = c.Query(uri, "$/lean/plainGoal", lsp::Position{l - 1, byte_col}, d);
                     if (!plain.ok() && IsInfrastructure(plain.status())) return plain.status();
                     return GoalsJson(plain);
                   };
                   if (args.contains("column")) {
                     LR_ASSIGN_OR_RETURN(out["goals"], at(ByteColumn(line_text, args["column"].get<int>())));
                   } else {
                     size_t indent = line_text.find_first_not_of(" \t");
                     LR_ASSIGN_OR_RETURN(out["goals_before"],
                                         at(indent == std::string::npos ? 0 : static_cast<int>(indent)));
                     LR_ASSIGN_OR_RETURN(out["goals_after"], at(static_cast<int>(line_text.size())));
                   }
                   return Status::Ok();
                 });
             if (!checked.ok()) return checked.status();
             return out;
           });

  Register("lean_term_goal", "Get the expected type at a position.",
           Schema({{"file_path", file_path},
                   {"line", line},
                   {"column", IntProp("Column (1-indexed; defaults to end of line)", 1)}},
                  {"file_path", "line"}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             LR_ASSIGN_OR_RETURN(auto file, LeanFile(args));
             const int l = args["line"].get<int>();
             LR_ASSIGN_OR_RETURN(std::string line_text, LineText(file.second, l, copy_.Relative(file.first)));
             int col = args.contains("column") ? ByteColumn(line_text, args["column"].get<int>())
                                               : static_cast<int>(line_text.size());
             Json expected;
             auto checked = CheckThen(
                 file.first, file.second,
                 [&](lsp::LeanClient& c, const std::string& uri, const lsp::CheckResult&, Clock::time_point d) {
                   auto term = c.Query(uri, "$/lean/plainTermGoal", lsp::Position{l - 1, col}, d);
                   if (!term.ok()) return IsInfrastructure(term.status()) ? term.status() : Status::Ok();
                   if (term->is_object() && term->contains("goal") && (*term)["goal"].is_string())
                     expected = StripFences((*term)["goal"].get<std::string>());
                   return Status::Ok();
                 });
             if (!checked.ok()) return checked.status();
             return Json{{"line_context", line_text}, {"expected_type", expected}};
           });

  Register(
      "lean_hover_info", "Get type signature and docs for a symbol. Column at the START of the identifier.",
      Schema({{"file_path", file_path},
              {"line", line},
              {"column", IntProp("Column at START of identifier (1-indexed)", 1)}},
             {"file_path", "line", "column"}),
      [this](const Json& args, const ToolCallContext&) -> Result<Json> {
        LR_ASSIGN_OR_RETURN(auto file, LeanFile(args));
        const int l = args["line"].get<int>(), column = args["column"].get<int>();
        LR_ASSIGN_OR_RETURN(std::string line_text, LineText(file.second, l, copy_.Relative(file.first)));
        const int col = ByteColumn(line_text, column);
        Json hover;
        auto checked =
            CheckThen(file.first, file.second,
                      [&](lsp::LeanClient& c, const std::string& uri, const lsp::CheckResult&, Clock::time_point d) {
                        auto h = c.Query(uri, "textDocument/hover", lsp::Position{l - 1, col}, d);
                        if (!h.ok()) return IsInfrastructure(h.status()) ? h.status() : Status::Ok();
                        hover = std::move(*h);
                        return Status::Ok();
                      });
        if (!checked.ok()) return checked.status();
        if (!hover.is_object() || !hover.contains("contents"))
          return NotFound("no hover information at line " + std::to_string(l) + ", column " + std::to_string(column));
        std::string symbol;
        if (hover.contains("range") && hover["range"]["start"].value("line", -1) == l - 1) {
          int a = lsp::Utf16ToUtf8Column(line_text, hover["range"]["start"].value("character", 0));
          int b = hover["range"]["end"].value("line", -1) == l - 1
                      ? lsp::Utf16ToUtf8Column(line_text, hover["range"]["end"].value("character", 0))
                      : static_cast<int>(line_text.size());
          symbol = line_text.substr(a, std::max(0, b - a));
        }
        const Json& contents = hover["contents"];
        std::string info = contents.is_string() ? contents.get<std::string>() : contents.value("value", "");
        Json diagnostics = Json::array();
        for (const lsp::Diagnostic& d : checked->diagnostics) {
          const lsp::Range& r = d.range_utf16;
          bool after_start = l - 1 > r.start.line || (l - 1 == r.start.line && column - 1 >= r.start.character);
          bool before_end = l - 1 < r.end.line || (l - 1 == r.end.line && column - 1 <= r.end.character);
          if (after_start && before_end && !d.is_silent) diagnostics.push_back(DiagnosticJson(d));
        }
        return Json{{"symbol", symbol}, {"info", StripFences(info)}, {"diagnostics", diagnostics}};
      });

  Register(
      "lean_completions", "Get IDE autocompletions. Use on INCOMPLETE code (after `.` or a partial name).",
      Schema({{"file_path", file_path},
              {"line", line},
              {"column", IntProp("Column number (1-indexed)", 1)},
              {"max_completions", IntProp("Max completions (default 32)", 1)}},
             {"file_path", "line", "column"}),
      [this](const Json& args, const ToolCallContext&) -> Result<Json> {
        LR_ASSIGN_OR_RETURN(auto file, LeanFile(args));
        const int l = args["line"].get<int>();
        LR_ASSIGN_OR_RETURN(std::string line_text, LineText(file.second, l, copy_.Relative(file.first)));
        const int col = ByteColumn(line_text, args["column"].get<int>());
        Json raw;
        auto checked =
            CheckThen(file.first, file.second,
                      [&](lsp::LeanClient& c, const std::string& uri, const lsp::CheckResult&, Clock::time_point d) {
                        auto r = c.Query(uri, "textDocument/completion", lsp::Position{l - 1, col}, d);
                        if (!r.ok()) return IsInfrastructure(r.status()) ? r.status() : Status::Ok();
                        raw = std::move(*r);
                        return Status::Ok();
                      });
        if (!checked.ok()) return checked.status();
        const Json& list = raw.is_object() ? raw.value("items", Json::array()) : raw;
        struct Item {
          std::string label;
          Json kind, detail;
        };
        std::vector<Item> items;
        if (list.is_array())
          for (const Json& c : list) {
            if (!c.is_object() || !c.contains("label") || !c["label"].is_string()) continue;
            Item it{c["label"].get<std::string>(), Json(), Json()};
            if (c.contains("kind") && c["kind"].is_number_integer() && *CompletionKindName(c["kind"].get<int>()))
              it.kind = CompletionKindName(c["kind"].get<int>());
            if (c.contains("detail") && c["detail"].is_string()) it.detail = c["detail"];
            items.push_back(std::move(it));
          }
        // Prefix matches first, then containing matches, then the rest, alphabetically within each.
        std::string before = line_text.substr(0, col), prefix;
        if (before.empty() || before.back() != '.') {
          size_t k = before.find_last_of(" \t()[]{},:;.");
          prefix = before.substr(k == std::string::npos ? 0 : k + 1);
          std::transform(prefix.begin(), prefix.end(), prefix.begin(), ::tolower);
        }
        auto key = [&](const Item& i) {
          std::string lower = i.label;
          std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
          int rank = prefix.empty()                            ? 0
                     : lower.rfind(prefix, 0) == 0             ? 0
                     : lower.find(prefix) != std::string::npos ? 1
                                                               : 2;
          return std::make_pair(rank, lower);
        };
        std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) { return key(a) < key(b); });
        size_t max = static_cast<size_t>(args.value("max_completions", 32));
        Json out = Json::array();
        for (size_t i = 0; i < items.size() && i < max; ++i)
          out.push_back({{"label", items[i].label}, {"kind", items[i].kind}, {"detail", items[i].detail}});
        return Json{{"items", out}};
      });

  Register("lean_declaration_file",
           "Get the file where a symbol is declared, with the declaration's source. The symbol must appear in the "
           "file first.",
           Schema({{"file_path", file_path},
                   {"symbol", StringProp("Symbol (case sensitive, must be in file)")},
                   {"full_file", {{"type", "boolean"}, {"description", "Return the whole file, not the declaration"}}}},
                  {"file_path", "symbol"}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             LR_ASSIGN_OR_RETURN(auto file, LeanFile(args));
             const std::string symbol = args["symbol"].get<std::string>();
             const std::string& text = file.second;
             // The first occurrence of the symbol as a whole identifier.
             size_t at = std::string::npos;
             for (size_t k = text.find(symbol); k != std::string::npos; k = text.find(symbol, k + 1)) {
               bool left = k == 0 || !IsIdentByte(text[k - 1]);
               bool right = k + symbol.size() >= text.size() || !IsIdentByte(text[k + symbol.size()]);
               if (left && right && !symbol.empty()) {
                 at = k;
                 break;
               }
             }
             if (at == std::string::npos)
               return NotFound("symbol `" + symbol + "` (case sensitive) not found in " + copy_.Relative(file.first) +
                               ". Add it first.");
             int l = static_cast<int>(std::count(text.begin(), text.begin() + at, '\n'));
             int col =
                 static_cast<int>(at - (text.rfind('\n', at) == std::string::npos ? 0 : text.rfind('\n', at) + 1));
             if (at == 0 || text[at - 1] == '\n') col = 0;
             Json target;
             auto checked = CheckThen(
                 file.first, text,
                 [&](lsp::LeanClient& c, const std::string& uri, const lsp::CheckResult&, Clock::time_point d) {
                   auto r = c.Query(uri, "textDocument/definition", lsp::Position{l, col}, d);
                   if (!r.ok()) return IsInfrastructure(r.status()) ? r.status() : Status::Ok();
                   if (r->is_array() && !r->empty())
                     target = (*r)[0];
                   else if (r->is_object())
                     target = *r;
                   return Status::Ok();
                 });
             if (!checked.ok()) return checked.status();
             if (!target.is_object()) return NotFound("no declaration available for `" + symbol + "`");
             std::string uri = target.value("targetUri", target.value("uri", ""));
             const Json& range = target.contains("targetRange") ? target["targetRange"] : target.value("range", Json());
             LR_ASSIGN_OR_RETURN(std::string path, lsp::UriToPath(uri));
             // Inside the project: through the working copy. Elsewhere: only a search root's file (the toolchain).
             std::string content;
             auto inside = copy_.Resolve(path);
             if (inside.ok()) {
               LR_ASSIGN_OR_RETURN(content, copy_.Read(*inside));
             } else {
               std::error_code ec;
               std::string canonical = fs::weakly_canonical(path, ec).string();
               bool allowed = false;
               for (const std::string& root : SearchRoots())
                 allowed = allowed || canonical.rfind(fs::weakly_canonical(root, ec).string() + "/", 0) == 0;
               if (!allowed)
                 return InvalidArgument("`" + symbol + "` is declared in " + path +
                                        ", outside the project and the toolchain's sources (refused)");
               LR_ASSIGN_OR_RETURN(content, ReadFile(canonical));
             }
             int total = LineCount(content);
             Json out = {{"file_path", path}, {"total_lines", total}};
             if (args.value("full_file", false) || !range.is_object()) {
               out["content"] = content;
               return out;
             }
             int first = range["start"].value("line", 0), last = range["end"].value("line", first);
             std::string slice;
             for (int k = first; k <= last && k < total; ++k) slice += std::string(lsp::LineOf(content, k)) + "\n";
             out["content"] = slice;
             out["start_line"] = first + 1;
             out["end_line"] = std::min(last, total - 1) + 1;
             return out;
           });

  Register("lean_multi_attempt",
           "Try several tactic snippets in place of one line without changing the file. Returns the goals and the "
           "diagnostics after each snippet.",
           Schema({{"file_path", file_path},
                   {"line", line},
                   {"snippets",
                    {{"type", "array"},
                     {"items", {{"type", "string"}}},
                     {"minItems", 1},
                     {"description", "Tactics to try (3+ recommended)"}}}},
                  {"file_path", "line", "snippets"}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             LR_ASSIGN_OR_RETURN(auto file, LeanFile(args));
             const int l = args["line"].get<int>();
             LR_RETURN_IF_ERROR(LineText(file.second, l, copy_.Relative(file.first)).status());
             std::vector<std::string> snippets;
             for (const Json& s : args["snippets"]) {
               std::string t = s.get<std::string>();
               while (!t.empty() && t.back() == '\n') t.pop_back();
               snippets.push_back(t);
             }
             lsp::CheckRequest request;
             request.project_root = copy_.root();
             request.path = file.first;
             request.text = file.second;
             request.timeout = std::chrono::milliseconds(static_cast<int64_t>(options_.lean_timeout_seconds * 1000));
             lean_checks_ += static_cast<long>(snippets.size());
             LR_ASSIGN_OR_RETURN(std::vector<lsp::AttemptResult> attempts,
                                 pool_.MultiAttempt(request, l - 1, snippets));
             Json items = Json::array();
             for (const lsp::AttemptResult& a : attempts) {
               Json diagnostics = Json::array();
               for (const lsp::Diagnostic& d : a.diagnostics)
                 if (!d.is_silent) diagnostics.push_back(DiagnosticJson(d));
               items.push_back({{"snippet", a.snippet}, {"goals", a.goal_after.goals}, {"diagnostics", diagnostics}});
             }
             return Json{{"items", items}};
           });

  Register("lean_run_code",
           "Run a self-contained Lean snippet (with its imports) in the project and return its diagnostics. Writes "
           "no file.",
           Schema({{"code", StringProp("Self-contained Lean code with imports")}}, {"code"}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             std::string scratch = copy_.root() + "/_leanrotor_run_" + std::to_string(::getpid()) + "_" +
                                   std::to_string(scratch_counter_++) + ".lean";
             auto checked = CheckThen(scratch, args["code"].get<std::string>(),
                                      [&](lsp::LeanClient& c, const std::string& uri, const lsp::CheckResult&,
                                          Clock::time_point) { return c.Close(uri); });
             if (!checked.ok()) return checked.status();
             Json diagnostics = DiagnosticsJson(checked->diagnostics);
             return Json{{"success", !checked->HasErrors()}, {"diagnostics", diagnostics}};
           });

  Register(
      "lean_local_search",
      "Fast local search to verify that declarations exist: names in the project, its dependencies and the "
      "toolchain's sources. Use BEFORE trying a lemma name.",
      Schema({{"query", StringProp("Declaration name or prefix")},
              {"limit", IntProp("Max matches (default 10)", 1)},
              {"project_root", StringProp("Project root (the server's project; other roots are refused)")}},
             {"query"}),
      [this](const Json& args, const ToolCallContext&) -> Result<Json> {
        if (args.contains("project_root")) {
          LR_ASSIGN_OR_RETURN(std::string root, copy_.Resolve(args["project_root"].get<std::string>()));
          if (root != copy_.root())
            return InvalidArgument("project_root " + root + " is not this server's project " + copy_.root());
        }
        LR_ASSIGN_OR_RETURN(std::vector<DeclarationHit> hits,
                            SearchDeclarations(SearchRoots(), args["query"].get<std::string>(),
                                               static_cast<size_t>(args.value("limit", 10))));
        Json items = Json::array();
        for (const DeclarationHit& h : hits)
          items.push_back({{"name", h.name}, {"kind", h.kind}, {"file", copy_.Relative(h.file)}, {"line", h.line}});
        return Json{{"items", items}};
      });

  Register(
      "lean_build",
      "Build the Lean project (lake build) and return the end of its log. Use only if needed (e.g. new imports). "
      "Builds the files on disk: edits held in the working copy are not part of the build.",
      Schema({{"lean_project_path", StringProp("Path to the Lean project (must be the server's project)")},
              {"clean", {{"type", "boolean"}, {"description", "Run lake clean first (slow)"}}},
              {"output_lines", IntProp("Return last N lines of build log (0=none; default 20)", 0)}},
             {}),
      [this](const Json& args, const ToolCallContext& context) -> Result<Json> {
        if (args.contains("lean_project_path")) {
          LR_ASSIGN_OR_RETURN(std::string root, copy_.Resolve(args["lean_project_path"].get<std::string>()));
          if (root != copy_.root())
            return InvalidArgument("lean_project_path " + root + " is not this server's project " + copy_.root());
        }
        auto deadline =
            Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options_.build_timeout_seconds * 1000));
        std::vector<std::string> log, errors;
        auto on_line = [&](const std::string& l) {
          if (l.rfind("trace:", 0) == 0) return;
          log.push_back(l);
          std::string lower = l;
          std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
          if (lower.find("error") != std::string::npos) errors.push_back(l);
          double done = 0, total = 0;
          std::string message;
          if (context.progress && ParseBuildProgress(l, &done, &total, &message))
            context.progress(done, total, message);
        };
        if (args.value("clean", false)) {
          LR_ASSIGN_OR_RETURN(int rc, RunProcess({"lake", "clean"}, copy_.root(), deadline, context.cancel, on_line));
          if (rc != 0) errors.push_back("lake clean exited with status " + std::to_string(rc));
        }
        LR_ASSIGN_OR_RETURN(int rc,
                            RunProcess(options_.build_command, copy_.root(), deadline, context.cancel, on_line));
        if (rc != 0 && errors.empty()) errors.push_back("build failed with exit status " + std::to_string(rc));
        if (rc == 0) pool_.StopIdle();  // running servers keep the old imports: later checks start afresh
        size_t keep = static_cast<size_t>(args.value("output_lines", 20));
        std::string output;
        for (size_t k = log.size() > keep ? log.size() - keep : 0; k < log.size(); ++k) output += log[k] + "\n";
        return Json{{"success", rc == 0}, {"output", output}, {"errors", rc == 0 ? Json::array() : Json(errors)}};
      });
}

void ToolBox::RegisterRepositoryTools() {
  Register(
      "read_file", "Read a file of the project (as edited so far), with line numbers; optionally a 1-based line range.",
      Schema({{"path", StringProp("File path (relative to the project root, or absolute inside it)")},
              {"start_line", IntProp("First line (1-indexed; default 1)", 1)},
              {"end_line", IntProp("Last line (1-indexed, inclusive; default the end)", 1)}},
             {"path"}),
      [this](const Json& args, const ToolCallContext&) -> Result<Json> {
        LR_ASSIGN_OR_RETURN(std::string path, copy_.Resolve(args["path"].get<std::string>()));
        LR_ASSIGN_OR_RETURN(std::string text, copy_.Read(path));
        int total = LineCount(text);
        int first = args.value("start_line", 1);
        int last = std::min(args.value("end_line", total), total);
        if (first > std::max(total, 1))
          return InvalidArgument("start_line " + std::to_string(first) + " is past the end: " + copy_.Relative(path) +
                                 " has " + std::to_string(total) + " lines");
        bool truncated = last - first + 1 > static_cast<int>(options_.max_file_lines);
        if (truncated) last = first + static_cast<int>(options_.max_file_lines) - 1;
        int width = static_cast<int>(std::to_string(std::max(last, 1)).size());
        std::string content;
        for (int k = first; k <= last; ++k) {
          std::string n = std::to_string(k);
          content += std::string(width - n.size(), ' ') + n + ": " + std::string(lsp::LineOf(text, k - 1)) + "\n";
        }
        Json out = {{"path", copy_.Relative(path)},
                    {"start_line", first},
                    {"end_line", last},
                    {"total_lines", total},
                    {"content", content}};
        if (truncated)
          out["note"] = "truncated at " + std::to_string(options_.max_file_lines) +
                        " lines; ask for a range from line " + std::to_string(last + 1);
        return out;
      });

  Register("edit_file",
           "Replace one snippet of a file: old_text must occur exactly once (include enough context). The edit goes "
           "to the working copy; the user's file changes only when the result is accepted.",
           Schema({{"path", StringProp("File path (relative to the project root, or absolute inside it)")},
                   {"old_text", StringProp("The exact text to replace (unique in the file)")},
                   {"new_text", StringProp("The replacement")}},
                  {"path", "old_text", "new_text"}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             LR_ASSIGN_OR_RETURN(std::string path, copy_.Resolve(args["path"].get<std::string>()));
             LR_ASSIGN_OR_RETURN(std::string text, copy_.Read(path));
             const std::string old_text = args["old_text"].get<std::string>();
             const std::string new_text = args["new_text"].get<std::string>();
             if (old_text.empty()) return InvalidArgument("old_text is empty (use write_file for a whole file)");
             size_t at = text.find(old_text);
             if (at == std::string::npos) return NotFound("old_text not found in " + copy_.Relative(path));
             int count = 0;
             for (size_t k = at; k != std::string::npos; k = text.find(old_text, k + 1)) ++count;
             if (count > 1)
               return InvalidArgument("old_text occurs " + std::to_string(count) + " times in " + copy_.Relative(path) +
                                      "; include more context so that it is unique");
             int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + at, '\n'));
             text.replace(at, old_text.size(), new_text);
             copy_.Write(path, text);
             return Json{{"path", copy_.Relative(path)},
                         {"line", line},
                         {"lines_removed", std::count(old_text.begin(), old_text.end(), '\n') + 1},
                         {"lines_added", std::count(new_text.begin(), new_text.end(), '\n') + 1}};
           });

  Register("write_file", "Write a whole file (created if missing) in the working copy.",
           Schema({{"path", StringProp("File path (relative to the project root, or absolute inside it)")},
                   {"content", StringProp("The file's complete new text")}},
                  {"path", "content"}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             LR_ASSIGN_OR_RETURN(std::string path, copy_.Resolve(args["path"].get<std::string>()));
             std::error_code ec;
             if (fs::is_directory(path, ec)) return InvalidArgument(copy_.Relative(path) + " is a directory");
             std::string content = args["content"].get<std::string>();
             int lines = LineCount(content);
             copy_.Write(path, std::move(content));
             return Json{{"path", copy_.Relative(path)}, {"lines", lines}};
           });

  Register("list_files",
           "List the files under a folder of the project (recursively; .git and .lake skipped), optionally those "
           "matching a glob such as *.lean.",
           Schema({{"path", StringProp("Folder (default: the project root)")},
                   {"pattern", StringProp("Glob on the file name, e.g. *.lean")},
                   {"max_results", IntProp("Most files returned (default 200)", 1)}},
                  {}),
           [this](const Json& args, const ToolCallContext&) -> Result<Json> {
             LR_ASSIGN_OR_RETURN(std::string dir, copy_.Resolve(args.value("path", ".")));
             std::error_code ec;
             if (!fs::is_directory(dir, ec)) return InvalidArgument(copy_.Relative(dir) + " is not a folder");
             std::string pattern = args.value("pattern", "");
             size_t max = static_cast<size_t>(args.value("max_results", 200));
             std::vector<std::string> files;
             for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
                  !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
               std::string name = it->path().filename().string();
               if (it->is_directory(ec)) {
                 if (name == ".git" || name == ".lake") it.disable_recursion_pending();
                 continue;
               }
               if (!pattern.empty() && ::fnmatch(pattern.c_str(), name.c_str(), 0) != 0) continue;
               files.push_back(copy_.Relative(it->path().string()));
             }
             // Files created in the working copy only.
             for (const std::string& changed : copy_.Changed()) {
               std::string rel = copy_.Relative(changed);
               std::string name = fs::path(changed).filename().string();
               if (changed.rfind(dir + "/", 0) == 0 && !fs::exists(changed, ec) &&
                   (pattern.empty() || ::fnmatch(pattern.c_str(), name.c_str(), 0) == 0))
                 files.push_back(rel);
             }
             std::sort(files.begin(), files.end());
             bool truncated = files.size() > max;
             if (truncated) files.resize(max);
             return Json{{"items", files}, {"truncated", truncated}};
           });
}

}  // namespace lr::agent
