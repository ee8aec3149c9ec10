// What the agent's tools cost on top of Lean.
//
// 1. MCP overhead per call: `leanrotor mcp` on a copy of tests/fixtures/lake_sorries with the scripted Lean server
//    (a stand-in that answers at once, so the round trip is leanrotor's own work: JSON-RPC in and out, the worker
//    pool, path resolution, the working copy, the server pool, the LSP round trips, the result's JSON), one call in
//    flight at a time, p50 and p99 per tool over --calls calls. The scripted server's own answering time is
//    included, so the numbers are an upper bound on leanrotor's overhead.
// 2. lean_local_search: the PCRE2 search (agent/local_search.h) against ripgrep (`rg -U`, same pattern) on a
//    generated tree of Lean-like files (--files files of --lines lines), per query, best of 5.
//
// Usage: tools_bench --leanrotor PATH --lean-server PATH --fixture DIR [--calls N] [--files N] [--lines N]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/local_search.h"
#include "base/file.h"
#include "lsp/server_process.h"

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

class McpClient {
 public:
  bool Start(const std::vector<std::string>& argv) {
    lr::lsp::ProcessSpec spec;
    spec.argv = argv;
    auto p = lr::lsp::ServerProcess::Spawn(spec);
    if (!p.ok()) {
      std::fprintf(stderr, "tools_bench: %s\n", p.status().ToString().c_str());
      return false;
    }
    process_ = std::move(*p);
    return true;
  }

  // Sends one request and waits for the response with its id (notifications are skipped).
  Json Call(const std::string& method, const Json& params) {
    int id = ++next_id_;
    std::string line = Json{{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", params}}.dump() + "\n";
    size_t off = 0;
    while (off < line.size()) {
      ssize_t n = ::write(process_->stdin_fd(), line.data() + off, line.size() - off);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) return Json();
      off += static_cast<size_t>(n);
    }
    for (;;) {
      size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        Json m = Json::parse(buffer_.substr(0, nl), nullptr, false);
        buffer_.erase(0, nl + 1);
        if (m.is_object() && m.contains("id") && m["id"] == id) return m;
        continue;
      }
      char chunk[65536];
      ssize_t n = ::read(process_->stdout_fd(), chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Json();
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  std::unique_ptr<lr::lsp::ServerProcess> process_;
  std::string buffer_;
  int next_id_ = 0;
};

// A tree of Lean-like files: declarations with attributes and modifiers among proof lines, deterministic.
void MakeCorpus(const fs::path& dir, int files, int lines) {
  std::mt19937 rng(7);
  const char* words[] = {"add", "mul", "comm", "assoc", "zero", "succ", "le",     "lt",     "sub",     "div",    "mod",
                         "pow", "neg", "inv",  "map",   "fold", "cons", "append", "length", "reverse", "filter", "sum"};
  const char* kinds[] = {"theorem", "lemma", "def", "@[simp] theorem", "private theorem", "instance", "abbrev"};
  for (int f = 0; f < files; ++f) {
    std::string text = "import Std\n\nnamespace Module" + std::to_string(f) + "\n\n";
    for (int l = 0; l < lines; ++l) {
      if (rng() % 8 == 0) {
        std::string name =
            std::string(words[rng() % 22]) + "_" + words[rng() % 22] + "_" + std::to_string(rng() % 1000);
        text += std::string(kinds[rng() % 7]) + " " + name + " (a b : Nat) : a + b = b + a := by\n";
      } else {
        text += "  simp only [Nat.add_comm, Nat.mul_assoc] at h ⊢ -- rewriting step " + std::to_string(l) + "\n";
      }
    }
    text += "\nend Module" + std::to_string(f) + "\n";
    fs::create_directories(dir / ("Dir" + std::to_string(f % 50)));
    (void)lr::WriteFileAtomic(
        (dir / ("Dir" + std::to_string(f % 50)) / ("File" + std::to_string(f) + ".lean")).string(), text);
  }
}

// The pattern agent/local_search.cc builds, for rg (Rust regex syntax accepts it as written).
std::string RgPattern(const std::string& query) {
  return "(?m)^[ \\t]*(?:@\\[[^\\]\\n]*\\][ \\t\\n]*)*"
         "(?:(?:private|protected|noncomputable|partial|unsafe|nonrec|scoped)[ \\t]+)*"
         "(theorem|lemma|def|abbrev|instance|structure|class|inductive|axiom|opaque)[ \\t]+"
         "((?:[^\\s.(:{\\[]+\\.)*" +
         query + "[^\\s(:{\\[]*)";
}

int RunRg(const std::string& query, const fs::path& dir) {
  std::string cmd = "rg -U -n --no-heading -g '*.lean' -e '" + RgPattern(query) + "' '" + dir.string() + "' | wc -l";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  int count = -1;
  if (std::fscanf(p, "%d", &count) != 1) count = -1;
  ::pclose(p);
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  std::string leanrotor, lean_server, fixture;
  int calls = 500, files = 2000, lines = 400;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--leanrotor")
      leanrotor = argv[i + 1];
    else if (a == "--lean-server")
      lean_server = argv[i + 1];
    else if (a == "--fixture")
      fixture = argv[i + 1];
    else if (a == "--calls")
      calls = std::atoi(argv[i + 1]);
    else if (a == "--files")
      files = std::atoi(argv[i + 1]);
    else if (a == "--lines")
      lines = std::atoi(argv[i + 1]);
  }
  if (leanrotor.empty() || lean_server.empty() || fixture.empty()) {
    std::fprintf(stderr,
                 "usage: tools_bench --leanrotor PATH --lean-server PATH --fixture DIR [--calls N] "
                 "[--files N] [--lines N]\n");
    return 2;
  }
  fs::path work = fs::temp_directory_path() / ("lr_tools_bench_" + std::to_string(::getpid()));
  fs::remove_all(work);
  fs::create_directories(work / "project");
  fs::copy(fixture, work / "project", fs::copy_options::recursive);

  // 1. MCP overhead per call.
  McpClient client;
  if (!client.Start({leanrotor, "mcp", "--project", (work / "project").string(), "--lean-cmd", lean_server,
                     "--search-root", (work / "none").string()}))
    return 2;
  Json init = client.Call("initialize", {{"protocolVersion", "2025-11-25"},
                                         {"capabilities", Json::object()},
                                         {"clientInfo", {{"name", "tools_bench"}, {"version", "0"}}}});
  if (!init.contains("result")) {
    std::fprintf(stderr, "tools_bench: initialize failed: %s\n", init.dump().c_str());
    return 2;
  }
  const std::string file = "Sorries/Basic.lean";
  const std::vector<std::pair<std::string, Json>> tools = {
      {"read_file", {{"path", file}, {"start_line", 7}, {"end_line", 9}}},
      {"lean_goal", {{"file_path", file}, {"line", 9}}},
      {"lean_diagnostic_messages", {{"file_path", file}}},
      {"lean_hover_info", {{"file_path", file}, {"line", 7}, {"column", 23}}},
      {"lean_multi_attempt", {{"file_path", file}, {"line", 9}, {"snippets", {"rfl", "simp"}}}},
      {"lean_local_search", {{"query", "add_swap"}}},
      {"lean_file_outline", {{"file_path", file}}},
  };
  std::printf("MCP round trip per call, one in flight, %d calls per tool (scripted Lean server; includes its time)\n",
              calls);
  std::printf("%-26s %9s %9s %9s\n", "tool", "p50 ms", "p99 ms", "max ms");
  for (const auto& [name, args] : tools) {
    for (int w = 0; w < 20; ++w) client.Call("tools/call", {{"name", name}, {"arguments", args}});  // warm-up
    std::vector<double> ms;
    for (int i = 0; i < calls; ++i) {
      auto start = Clock::now();
      Json r = client.Call("tools/call", {{"name", name}, {"arguments", args}});
      ms.push_back(Ms(Clock::now() - start));
      if (!r.contains("result") || r["result"].value("isError", true)) {
        std::fprintf(stderr, "tools_bench: %s failed: %s\n", name.c_str(), r.dump().c_str());
        return 2;
      }
    }
    std::printf("%-26s %9.3f %9.3f %9.3f\n", name.c_str(), Percentile(ms, 0.5), Percentile(ms, 0.99),
                *std::max_element(ms.begin(), ms.end()));
  }

  // 2. lean_local_search: PCRE2 against ripgrep.
  fs::path corpus = work / "corpus";
  MakeCorpus(corpus, files, lines);
  uintmax_t bytes = 0;
  for (const auto& e : fs::recursive_directory_iterator(corpus))
    if (e.is_regular_file()) bytes += e.file_size();
  std::printf("\nlean_local_search over %d files, %.1f MB (page cache warm), best of 5 per query\n", files,
              static_cast<double>(bytes) / 1e6);
  bool have_rg = lr::lsp::FindOnPath("rg").has_value();
  std::printf("%-16s %8s %12s %8s %12s\n", "query", "hits", "pcre2 ms", "rg hits", "rg ms");
  for (const char* query : {"add_comm_1", "reverse_sum", "zero", "no_such_name_xyz"}) {
    double best = 1e18, best_rg = 1e18;
    size_t hits = 0;
    int rg_hits = -1;
    for (int rep = 0; rep < 5; ++rep) {
      auto start = Clock::now();
      auto r = lr::agent::SearchDeclarations({corpus.string()}, query, 1u << 30);
      best = std::min(best, Ms(Clock::now() - start));
      hits = r.ok() ? r->size() : 0;
      if (have_rg) {
        start = Clock::now();
        rg_hits = RunRg(query, corpus);
        best_rg = std::min(best_rg, Ms(Clock::now() - start));
      }
    }
    if (have_rg)
      std::printf("%-16s %8zu %12.1f %8d %12.1f\n", query, hits, best, rg_hits, best_rg);
    else
      std::printf("%-16s %8zu %12.1f %8s %12s\n", query, hits, best, "-", "(no rg)");
  }
  fs::remove_all(work);
  return 0;
}
