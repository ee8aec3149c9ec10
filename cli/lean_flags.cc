#include "cli/lean_flags.h"

#include <sstream>

#include "lsp/server_process.h"

namespace lr::cli {
namespace {

std::vector<std::string> SplitWords(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

}  // namespace

void AddLeanFlags(CLI::App* sub, LeanFlags* f) {
  sub->add_option("--lean-cmd", f->command,
                  "Lean server command, split at spaces (default: `lake serve` in a Lake project, `lean --server` "
                  "otherwise)");
  sub->add_option("--lean-command", f->command)->group("");  // another spelling, not listed
  sub->add_option("--lean-memory", f->memory_gib, "address-space limit of each Lean process, in GiB (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--lean-cpu", f->cpu_seconds, "CPU-time limit of each Lean process, in seconds (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

Status CheckLeanAvailable(const LeanFlags& f, const std::vector<std::string>& project_roots) {
  const std::vector<std::string> command = SplitWords(f.command);
  if (!command.empty()) {
    if (command.front().find('/') == std::string::npos && !lsp::FindOnPath(command.front()))
      return NotFound("--lean-cmd: " + command.front() + " is not on PATH");
    return Status::Ok();
  }
  for (const std::string& root : project_roots) {
    Result<std::vector<std::string>> found = lsp::DefaultLeanCommand(root);
    if (!found.ok()) return found.status();
  }
  return Status::Ok();
}

lsp::PoolOptions MakePoolOptions(const LeanFlags& f, size_t max_servers) {
  lsp::PoolOptions o;
  o.lean_command = SplitWords(f.command);
  o.max_servers = max_servers;
  o.server_memory_limit_bytes = static_cast<int64_t>(f.memory_gib * double(int64_t{1} << 30));
  o.server_cpu_limit_seconds = f.cpu_seconds;
  return o;
}

std::string FindLakeRoot(std::filesystem::path dir) {
  for (; !dir.empty(); dir = dir.parent_path()) {
    std::error_code ec;
    if (std::filesystem::exists(dir / "lakefile.lean", ec) || std::filesystem::exists(dir / "lakefile.toml", ec))
      return dir.string();
    if (dir == dir.parent_path()) break;
  }
  return "";
}

}  // namespace lr::cli
