// A scripted stand-in for the Lean language server, for tests only: it is not Lean and elaborates nothing.
//
// It speaks LSP on stdin/stdout with the message shapes of Lean 4's server (initialize, didOpen with
// dependencyBuildMode, full and ranged didChange, publishDiagnostics with version/fullRange/leanTags, fileProgress,
// textDocument/waitForDiagnostics, $/lean/plainGoal, $/lean/plainTermGoal, hover, completion, definition,
// documentSymbol, shutdown/exit), and computes
// diagnostics from the text with fixed rules:
//   - a `sorry` token: warning "declaration uses 'sorry'" on the name of the declaration that contains it;
//   - `ERROR: msg` on a line: an error "msg" from the marker to the end of the line;
//   - `UNSOLVED` on a line: an error "unsolved goals\n<goal>" with leanTags [1];
//   - `#print axioms NAME`: information "'NAME' depends on axioms: [propext]".
//   - `exact NAME ...` where NAME is no known declaration (see below), on a line without the markers above: an
//     error "unknown identifier 'NAME'".
// plainGoal: null before the first `by`; [] on a line holding `rfl`, `decide` or `exact` (without markers); otherwise
// the goal named by the last
// `-- goal: ...` comment above the position (`\n` in it is a newline), or "⊢ True".
// Declarations are the lines that start with theorem/lemma/def/abbrev/instance/structure/inductive (after modifiers
// such as `private` or `@[simp]`); their names, with the open documents and every .lean file under the working
// directory, answer documentSymbol (DocumentSymbol[], one per declaration, kind 6 as Lean's), definition
// (LocationLink[]), hover (the declaration's signature line, in a ```lean block) and completion (a CompletionList of
// the names with the identifier's prefix, plus a few fixed Nat lemmas).
// Columns are UTF-16 code units, as Lean's.
//
// Usage: scripted_lean_server [--scenario NAME] [--once-file PATH] [--pid-file PATH] [--hang-on TEXT]
//                             [--crash-on TEXT] [--delay-ms N]
// Scenarios (behaviour on every document update unless said otherwise):
//   normal           as above
//   progress_first   fileProgress says "done" before the diagnostics, which come 100 ms later
//   stale            after the real diagnostics, a bogus error batch tagged with the previous version
//   incremental      the diagnostics in two batches, the second with isIncremental: true
//   server_requests  client/registerCapability and window/workDoneProgress/create first; waits for both answers
//   crash_worker     waitForDiagnostics answers error -32902 (Lean's worker crashed)
//   fatal_progress   a fileProgress range of kind 2 (fatalError), then the barrier answers normally
//   hang             stops reading and answering after the document arrives
//   die_mid_message  writes half a message and exits with status 1
//   noise_stdout     writes a non-JSON line on stdout before its messages
//   noise_stderr     writes non-JSON lines on stderr (stdout stays clean)
//   exit_on_start    exits with status 3 before reading anything
//   hang_initialize  reads everything and answers nothing, initialize included (exits at end of input)
// --hang-on TEXT: behave as `hang` for a document whose text contains TEXT (normal otherwise).
// --crash-on TEXT: behave as `crash_worker` for a document whose text contains TEXT (normal otherwise).
// --delay-ms N: wait N ms before processing each document update (a slow elaboration).
// With --once-file, the scenario applies only while PATH does not exist (the first server creates it); later
// servers behave as `normal`. That is how the pool's retry on a fresh server is tested.
// With --pid-file, the server writes its process id there (atomically) before it reads anything, so that a test can
// check the process is gone after its client was interrupted.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "lsp/jsonrpc.h"
#include "lsp/lean_client.h"
#include "lsp/utf16.h"

using Json = nlohmann::json;
using lr::lsp::EncodeFrame;
using lr::lsp::LineOf;
using lr::lsp::Utf16ToUtf8Column;
using lr::lsp::Utf8ToUtf16Column;

namespace {

std::string g_scenario = "normal";
std::string g_hang_on, g_crash_on;
int g_delay_ms = 0;
std::map<std::string, std::pair<int, std::string>> g_docs;  // uri -> (version, text)
lr::lsp::FrameDecoder g_decoder;
std::deque<Json> g_backlog;  // client messages read while waiting for answers to our own requests

void Send(const Json& msg) {
  std::string frame = EncodeFrame(msg.dump());
  size_t off = 0;
  while (off < frame.size()) {
    ssize_t n = ::write(1, frame.data() + off, frame.size() - off);
    if (n <= 0) std::exit(0);
    off += static_cast<size_t>(n);
  }
}

void Notify(const std::string& method, const Json& params) {
  Send({{"jsonrpc", "2.0"}, {"method", method}, {"params", params}});
}

// Next message from the client; exits on end of input.
Json Read() {
  if (!g_backlog.empty()) {
    Json m = g_backlog.front();
    g_backlog.pop_front();
    return m;
  }
  char buf[65536];
  for (;;) {
    auto next = g_decoder.Next();
    if (!next.ok()) {
      std::fprintf(stderr, "scripted server: %s\n", next.status().ToString().c_str());
      std::exit(4);
    }
    if (next->has_value()) return Json::parse(**next);
    ssize_t n = ::read(0, buf, sizeof buf);
    if (n <= 0) std::exit(0);
    g_decoder.Feed(std::string_view(buf, static_cast<size_t>(n)));
  }
}

Json Pos(const std::string& text, int line, int byte_col) {
  return {{"line", line}, {"character", Utf8ToUtf16Column(LineOf(text, line), byte_col)}};
}

Json Range(const std::string& text, int line, int a, int b) {
  return {{"start", Pos(text, line, a)}, {"end", Pos(text, line, b)}};
}

bool IsIdent(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '\'' || c == '.'; }

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  size_t i = 0;
  for (;;) {
    size_t nl = text.find('\n', i);
    out.push_back(text.substr(i, nl == std::string::npos ? std::string::npos : nl - i));
    if (nl == std::string::npos) break;
    i = nl + 1;
  }
  return out;
}

// The goal text from the last `-- goal: ` comment at or above `line`.
std::string GoalFor(const std::string& text, int line) {
  auto lines = Lines(text);
  for (int l = std::min(line, static_cast<int>(lines.size()) - 1); l >= 0; --l) {
    size_t k = lines[l].find("-- goal: ");
    if (k == std::string::npos) continue;
    std::string g = lines[l].substr(k + 9), out;
    for (size_t i = 0; i < g.size(); ++i) {
      if (g[i] == '\\' && i + 1 < g.size() && g[i + 1] == 'n')
        out += '\n', ++i;
      else
        out += g[i];
    }
    return out;
  }
  return "⊢ True";
}

struct Decl;
std::vector<Decl> AllDecls();
const Decl* Resolve(const std::vector<Decl>& decls, const std::string& name);

Json Diagnostics(const std::string& text) {
  Json out = Json::array();
  auto lines = Lines(text);
  int decl_line = -1, decl_a = 0, decl_b = 0;
  for (int l = 0; l < static_cast<int>(lines.size()); ++l) {
    const std::string& s = lines[l];
    for (const char* kw : {"theorem ", "lemma ", "example"}) {
      size_t k = s.find(kw);
      if (k != 0) continue;
      decl_line = l;
      size_t a = k + std::strlen(kw);
      while (a < s.size() && s[a] == ' ') ++a;
      size_t b = a;
      while (b < s.size() && s[b] != ' ' && s[b] != ':' && s[b] != '(') ++b;
      if (b == a) a = k, b = k + std::strlen(kw);  // `example`: the keyword itself
      decl_a = static_cast<int>(a), decl_b = static_cast<int>(b);
    }
    std::string code = s.substr(0, s.find("--"));
    for (size_t k = code.find("sorry"); k != std::string::npos; k = code.find("sorry", k + 1)) {
      if ((k > 0 && IsIdent(code[k - 1])) || (k + 5 < code.size() && IsIdent(code[k + 5]))) continue;
      int dl = decl_line >= 0 ? decl_line : l;
      Json r = decl_line >= 0 ? Range(text, dl, decl_a, decl_b)
                              : Range(text, l, static_cast<int>(k), static_cast<int>(k) + 5);
      out.push_back({{"source", "Lean 4"},
                     {"severity", 2},
                     {"range", r},
                     {"fullRange", r},
                     {"message", "declaration uses 'sorry'"}});
    }
    size_t e = s.find("ERROR:");
    if (e != std::string::npos) {
      std::string msg = s.substr(e + 6);
      while (!msg.empty() && msg[0] == ' ') msg.erase(0, 1);
      Json r = Range(text, l, static_cast<int>(e), static_cast<int>(s.size()));
      out.push_back({{"source", "Lean 4"}, {"severity", 1}, {"range", r}, {"fullRange", r}, {"message", msg}});
    }
    size_t u = code.find("UNSOLVED");
    if (u != std::string::npos) {
      Json r = Range(text, l, static_cast<int>(u), static_cast<int>(u) + 8);
      out.push_back({{"source", "Lean 4"},
                     {"severity", 1},
                     {"range", r},
                     {"fullRange", r},
                     {"message", "unsolved goals\n" + GoalFor(text, l)},
                     {"leanTags", {1}}});
    }
    size_t x = code.find("exact ");
    bool marked = s.find("ERROR:") != std::string::npos || code.find("UNSOLVED") != std::string::npos;
    if (x != std::string::npos && !marked) {
      size_t a = x + 6, b = a;
      while (b < code.size() && IsIdent(code[b])) ++b;
      std::string name = code.substr(a, b - a);
      if (!name.empty() && Resolve(AllDecls(), name) == nullptr) {
        Json r = Range(text, l, static_cast<int>(a), static_cast<int>(b));
        out.push_back({{"source", "Lean 4"},
                       {"severity", 1},
                       {"range", r},
                       {"fullRange", r},
                       {"message", "unknown identifier '" + name + "'"}});
      }
    }
    if (s.rfind("#print axioms ", 0) == 0) {
      std::string name = s.substr(14);
      Json r = Range(text, l, 0, 6);
      out.push_back({{"source", "Lean 4"},
                     {"severity", 3},
                     {"range", r},
                     {"fullRange", r},
                     {"message", "'" + name + "' depends on axioms: [propext]"}});
    }
  }
  return out;
}

// A declaration the scripted server knows: from a line that starts with a declaration keyword.
struct Decl {
  std::string name;
  std::string signature;  // the declaration's first line, without the keyword and the trailing `:= ...`
  std::string uri;
  int line = 0;
  int name_col = 0;  // byte column
  int end_line = 0;  // last line before the next declaration or the end
};

std::vector<Decl> DeclsIn(const std::string& uri, const std::string& text) {
  std::vector<Decl> out;
  auto lines = Lines(text);
  const int last_line = static_cast<int>(lines.size()) - 1;
  auto close = [&](int l) {  // the open declaration, if any, ends before line l
    if (!out.empty() && out.back().end_line == last_line) out.back().end_line = l - 1;
  };
  for (int l = 0; l < static_cast<int>(lines.size()); ++l) {
    std::string s = lines[l];
    size_t k = 0;
    for (;;) {  // skip attributes and modifiers
      if (s.compare(k, 2, "@[") == 0) {
        size_t close = s.find(']', k);
        if (close == std::string::npos) break;
        k = close + 1;
      } else if (s.compare(k, 8, "private ") == 0 || s.compare(k, 10, "protected ") == 0 ||
                 s.compare(k, 12, "noncomputable ") == 0) {
        k = s.find(' ', k);
      } else {
        break;
      }
      while (k < s.size() && s[k] == ' ') ++k;
    }
    bool found = false;
    for (const char* kw : {"theorem ", "lemma ", "def ", "abbrev ", "instance ", "structure ", "inductive "}) {
      if (s.compare(k, std::strlen(kw), kw) != 0) continue;
      k += std::strlen(kw);
      found = true;
      break;
    }
    if (!found) {
      if (!s.empty() && s[0] != ' ' && s.rfind("--", 0) != 0) close(l);
      continue;
    }
    size_t b = k;
    while (b < s.size() && IsIdent(s[b])) ++b;
    if (b == k) continue;
    close(l);
    Decl d{s.substr(k, b - k), s.substr(k), uri, l, static_cast<int>(k), last_line};
    size_t assign = d.signature.find(":=");
    if (assign != std::string::npos) d.signature = d.signature.substr(0, assign);
    while (!d.signature.empty() && d.signature.back() == ' ') d.signature.pop_back();
    out.push_back(d);
  }
  for (Decl& d : out)
    while (d.end_line > d.line && lines[d.end_line].find_first_not_of(" \t\r") == std::string::npos) --d.end_line;
  return out;
}

// Declarations of the open documents, then of the .lean files under the working directory that are not open.
std::vector<Decl> AllDecls() {
  std::vector<Decl> out;
  for (const auto& [uri, doc] : g_docs)
    for (Decl& d : DeclsIn(uri, doc.second)) out.push_back(std::move(d));
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(".", ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->path().extension() != ".lean" || !it->is_regular_file()) continue;
    std::string uri = lr::lsp::PathToUri(std::filesystem::absolute(it->path()).lexically_normal().string());
    if (g_docs.count(uri)) continue;
    std::ifstream in(it->path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (Decl& d : DeclsIn(uri, text)) out.push_back(std::move(d));
  }
  for (const char* fixed : {"Nat.add_comm (n m : Nat) : n + m = m + n", "Nat.add_zero (n : Nat) : n + 0 = n",
                            "Nat.zero_add (n : Nat) : 0 + n = n", "Nat.mul_comm (n m : Nat) : n * m = m * n",
                            "Nat.two_mul (n : Nat) : 2 * n = n + n"}) {
    std::string sig = fixed;
    out.push_back({sig.substr(0, sig.find(' ')), sig, "", 0, 0, 0});
  }
  return out;
}

// The declaration `name` refers to: an exact match, or one whose last components are `name`.
const Decl* Resolve(const std::vector<Decl>& decls, const std::string& name) {
  for (const Decl& d : decls)
    if (d.name == name) return &d;
  for (const Decl& d : decls)
    if (d.name.size() > name.size() && d.name.compare(d.name.size() - name.size(), name.size(), name) == 0 &&
        d.name[d.name.size() - name.size() - 1] == '.')
      return &d;
  return nullptr;
}

void AwaitAnswers(std::vector<int> ids) {
  std::deque<Json> held;
  while (!ids.empty()) {
    Json m = Read();
    if (!m.contains("method") && m.contains("id")) {
      std::erase(ids, m["id"].get<int>());
      continue;
    }
    held.push_back(m);
  }
  g_backlog.insert(g_backlog.end(), held.begin(), held.end());
}

void Publish(const std::string& uri) {
  auto& [version, text] = g_docs[uri];
  Json doc = {{"uri", uri}, {"version", version}};
  Json all = Diagnostics(text);
  int last = static_cast<int>(Lines(text).size()) - 1;
  Json whole = {{"start", {{"line", 0}, {"character", 0}}}, {"end", {{"line", last}, {"character", 0}}}};
  if (g_scenario == "server_requests") {
    Send(
        {{"jsonrpc", "2.0"},
         {"id", 9001},
         {"method", "client/registerCapability"},
         {"params", {{"registrations", Json::array({{{"id", "w"}, {"method", "workspace/didChangeWatchedFiles"}}})}}}});
    Send(
        {{"jsonrpc", "2.0"}, {"id", 9002}, {"method", "window/workDoneProgress/create"}, {"params", {{"token", "t"}}}});
    AwaitAnswers({9001, 9002});
  }
  if (g_scenario == "fatal_progress") {
    Notify("$/lean/fileProgress", {{"textDocument", doc}, {"processing", {{{"range", whole}, {"kind", 2}}}}});
    return;
  }
  Notify("$/lean/fileProgress", {{"textDocument", doc}, {"processing", {{{"range", whole}, {"kind", 1}}}}});
  if (g_scenario == "progress_first") {
    Notify("$/lean/fileProgress", {{"textDocument", doc}, {"processing", Json::array()}});
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (g_scenario == "incremental" && all.size() > 1) {
    Json first = Json::array(), rest = Json::array();
    for (size_t i = 0; i < all.size(); ++i) (i == 0 ? first : rest).push_back(all[i]);
    Notify("textDocument/publishDiagnostics", {{"uri", uri}, {"version", version}, {"diagnostics", first}});
    Notify("textDocument/publishDiagnostics",
           {{"uri", uri}, {"version", version}, {"diagnostics", rest}, {"isIncremental", true}});
  } else {
    Notify("textDocument/publishDiagnostics", {{"uri", uri}, {"version", version}, {"diagnostics", all}});
  }
  if (g_scenario == "stale") {
    Json bogus = {{{"source", "Lean 4"}, {"severity", 1}, {"range", whole}, {"message", "stale diagnostic"}}};
    Notify("textDocument/publishDiagnostics", {{"uri", uri}, {"version", version - 1}, {"diagnostics", bogus}});
  }
  if (g_scenario != "progress_first")
    Notify("$/lean/fileProgress", {{"textDocument", doc}, {"processing", Json::array()}});
}

bool Contains(const std::string& uri, const std::string& marker) {
  return !marker.empty() && g_docs[uri].second.find(marker) != std::string::npos;
}

void OnDocumentUpdate(const std::string& uri) {
  if (g_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(g_delay_ms));
  if (g_scenario == "hang" || Contains(uri, g_hang_on)) {
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  if (g_scenario == "die_mid_message") {
    const char half[] = "Content-Length: 500\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"textDocument/publishDiag";
    (void)!::write(1, half, sizeof half - 1);
    std::_Exit(1);
  }
  Publish(uri);
}

void Reply(const Json& id, const Json& result) { Send({{"jsonrpc", "2.0"}, {"id", id}, {"result", result}}); }

void ReplyError(const Json& id, int code, const std::string& message) {
  Send({{"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", message}}}});
}

void Handle(const Json& m) {
  std::string method = m.value("method", "");
  const Json& p = m.contains("params") ? m["params"] : Json();
  bool request = m.contains("id");
  if (g_scenario == "hang_initialize") return;
  if (method == "initialize") {
    Reply(m["id"], {{"capabilities",
                     {{"textDocumentSync", {{"openClose", true}, {"change", 2}}},
                      {"hoverProvider", true},
                      {"completionProvider", Json::object()},
                      {"definitionProvider", true},
                      {"documentSymbolProvider", true}}},
                    {"serverInfo", {{"name", "scripted-lean-server (a test tool, not Lean)"}, {"version", "0"}}}});
  } else if (method == "textDocument/didOpen") {
    std::string uri = p["textDocument"]["uri"];
    g_docs[uri] = {p["textDocument"]["version"].get<int>(), p["textDocument"]["text"].get<std::string>()};
    if (!p.contains("dependencyBuildMode"))
      std::fprintf(stderr, "scripted server: didOpen without dependencyBuildMode\n");
    OnDocumentUpdate(uri);
  } else if (method == "textDocument/didChange") {
    std::string uri = p["textDocument"]["uri"];
    auto& [version, text] = g_docs[uri];
    version = p["textDocument"]["version"].get<int>();
    for (const Json& c : p["contentChanges"]) {
      if (!c.contains("range")) {
        text = c["text"];
        continue;
      }
      auto offset = [&](const Json& pos) {
        int line = pos["line"], ch = pos["character"];
        return lr::lsp::OffsetOf(text, line, Utf16ToUtf8Column(LineOf(text, line), ch));
      };
      size_t a = offset(c["range"]["start"]), b = offset(c["range"]["end"]);
      text.replace(a, b - a, c["text"].get<std::string>());
    }
    OnDocumentUpdate(uri);
  } else if (method == "textDocument/didClose") {
    g_docs.erase(p["textDocument"]["uri"].get<std::string>());
  } else if (method == "textDocument/waitForDiagnostics") {
    std::string uri = p["uri"];
    if (g_scenario == "crash_worker" || Contains(uri, g_crash_on)) {
      ReplyError(m["id"], -32902, "Server process for " + uri + " crashed, likely due to a stack overflow or a bug.");
      return;
    }
    if (!g_docs.count(uri) || g_docs[uri].first < p["version"].get<int>()) {
      ReplyError(m["id"], -32602, "no such document version");
      return;
    }
    if (g_scenario == "progress_first")
      Notify("$/lean/fileProgress",
             {{"textDocument", {{"uri", uri}, {"version", g_docs[uri].first}}}, {"processing", Json::array()}});
    Reply(m["id"], Json::object());
  } else if (method == "textDocument/documentSymbol") {
    std::string uri = p["textDocument"]["uri"];
    const std::string& text = g_docs[uri].second;
    Json out = Json::array();
    for (const Decl& d : DeclsIn(uri, text)) {
      std::string last(LineOf(text, d.end_line));
      Json range = {{"start", Pos(text, d.line, 0)}, {"end", Pos(text, d.end_line, static_cast<int>(last.size()))}};
      out.push_back(
          {{"name", d.name},
           {"kind", 6},
           {"range", range},
           {"selectionRange", Range(text, d.line, d.name_col, d.name_col + static_cast<int>(d.name.size()))}});
    }
    Reply(m["id"], out);
  } else if (method == "$/lean/plainGoal" || method == "$/lean/plainTermGoal" || method == "textDocument/hover" ||
             method == "textDocument/definition" || method == "textDocument/completion") {
    std::string uri = p["textDocument"]["uri"];
    const std::string& text = g_docs[uri].second;
    int line = p["position"]["line"];
    int col = Utf16ToUtf8Column(LineOf(text, line), p["position"]["character"]);
    size_t offset = lr::lsp::OffsetOf(text, line, col);
    bool in_tactics = text.substr(0, offset).find(" by") != std::string::npos;
    std::string line_text(LineOf(text, line));
    size_t a = col, b = col;
    while (a > 0 && IsIdent(line_text[a - 1])) --a;
    while (b < line_text.size() && IsIdent(line_text[b])) ++b;
    std::string word = line_text.substr(a, b - a);
    if (method == "textDocument/completion") {
      std::string prefix = line_text.substr(a, col - a);
      Json items = Json::array();
      for (const Decl& d : AllDecls()) {
        std::string last = d.name.substr(d.name.rfind('.') == std::string::npos ? 0 : d.name.rfind('.') + 1);
        if (d.name.rfind(prefix, 0) != 0 && last.rfind(prefix, 0) != 0) continue;
        items.push_back({{"label", d.name}, {"kind", 3}, {"detail", d.signature.substr(d.name.size() + 1)}});
      }
      return Reply(m["id"], {{"isIncomplete", true}, {"items", items}});
    }
    if (method == "textDocument/definition" || method == "textDocument/hover") {
      if (word.empty()) return Reply(m["id"], Json());
      std::vector<Decl> decls = AllDecls();
      const Decl* d = Resolve(decls, word);
      Json origin = Range(text, line, static_cast<int>(a), static_cast<int>(b));
      if (method == "textDocument/hover")
        return Reply(m["id"], {{"contents",
                                {{"kind", "markdown"}, {"value", "```lean\n" + (d ? d->signature : word) + "\n```"}}},
                               {"range", origin}});
      if (d == nullptr || d->uri.empty()) return Reply(m["id"], Json::array());
      Json target = {{"start", {{"line", d->line}, {"character", 0}}},
                     {"end", {{"line", d->end_line}, {"character", 0}}}};
      Json selection = {{"start", {{"line", d->line}, {"character", d->name_col}}},
                        {"end", {{"line", d->line}, {"character", d->name_col + static_cast<int>(d->name.size())}}}};
      return Reply(m["id"], Json::array({{{"originSelectionRange", origin},
                                          {"targetUri", d->uri},
                                          {"targetRange", target},
                                          {"targetSelectionRange", selection}}}));
    }
    if (method == "$/lean/plainTermGoal")
      return Reply(m["id"], {{"goal", "⊢ Prop"}, {"range", Range(text, line, col, col)}});
    if (!in_tactics) return Reply(m["id"], Json());
    bool solved = line_text.find("rfl") != std::string::npos || line_text.find("decide") != std::string::npos ||
                  (line_text.find("exact ") != std::string::npos && line_text.find("ERROR:") == std::string::npos &&
                   line_text.find("UNSOLVED") == std::string::npos);
    Json goals = solved ? Json::array() : Json::array({GoalFor(text, line)});
    std::string rendered = "```lean\n";
    for (const Json& g : goals) rendered += g.get<std::string>() + "\n";
    Reply(m["id"], {{"rendered", rendered + "```"}, {"goals", goals}});
  } else if (method == "shutdown") {
    Reply(m["id"], Json());
  } else if (method == "exit") {
    std::exit(0);
  } else if (request) {
    ReplyError(m["id"], -32601, "method not found: " + method);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string once_file;
  std::string pid_file;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--scenario") == 0) g_scenario = argv[i + 1];
    if (std::strcmp(argv[i], "--once-file") == 0) once_file = argv[i + 1];
    if (std::strcmp(argv[i], "--pid-file") == 0) pid_file = argv[i + 1];
    if (std::strcmp(argv[i], "--hang-on") == 0) g_hang_on = argv[i + 1];
    if (std::strcmp(argv[i], "--crash-on") == 0) g_crash_on = argv[i + 1];
    if (std::strcmp(argv[i], "--delay-ms") == 0) g_delay_ms = std::atoi(argv[i + 1]);
  }
  if (!pid_file.empty() && !lr::WriteFileAtomic(pid_file, std::to_string(::getpid()) + "\n").ok()) return 4;
  if (!once_file.empty()) {
    if (std::ifstream(once_file).good())
      g_scenario = "normal";
    else
      std::ofstream(once_file) << "used\n";
  }
  if (g_scenario == "exit_on_start") return 3;
  if (g_scenario == "noise_stderr") std::fprintf(stderr, "warning: this is not JSON\n[noise] building deps...\n");
  if (g_scenario == "noise_stdout") {
    const char noise[] = "info: downloading toolchain, not JSON\n";
    (void)!::write(1, noise, sizeof noise - 1);
  }
  for (;;) Handle(Read());
}
