// The tools an agent calls inside a Lean project, one registry for the agent loop and for `leanrotor mcp`.
//
// Lean tools carry lean-lsp-mcp's names, arguments and result shapes, so that a model trained with that server
// (Leanstral) calls them as it learned: lean_file_outline, lean_diagnostic_messages, lean_goal, lean_term_goal,
// lean_hover_info, lean_completions, lean_declaration_file, lean_multi_attempt, lean_run_code, lean_local_search,
// lean_build. Lines and columns in arguments and results are 1-based; columns count UTF-16 code units, as LSP's.
// Repository tools: read_file (a line range, numbered), edit_file (replace one unique snippet), write_file (a whole
// file), list_files.
//
// Every file argument is resolved by the WorkingCopy (inside the project root, symlinks followed, escapes refused).
// Lean sees the working copy's text (an edited file is checked as edited); nothing is written to the user's files
// here. Each Lean tool checks the file's current text with the server pool and waits for its diagnostics barrier
// (lsp/lean_client.h) before it answers, so no answer describes an older text.
//
// A result is a JSON object (`structured`) and its text (the object as JSON), or a tool error: a message the model
// or the MCP client can read (bad arguments naming the field, a path outside the project, a line past the end, Lean
// unavailable). A tool error is never a crash and never stops the caller.
//
// Thread-safe: Call may run from several threads at once (the MCP server's workers).
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/working_copy.h"
#include "lm/language_model.h"
#include "lsp/server_pool.h"

namespace lr::agent {

struct ToolDefinition {
  std::string name;
  std::string description;
  nlohmann::json input_schema;  // JSON Schema of the arguments object
};

struct ToolOutcome {
  bool is_error = false;
  nlohmann::json structured;  // the result object; null for an error
  std::string text;           // structured as JSON text, or the error message
};

// Per call: a flag that stops it (tools check it before Lean requests; lean_build kills its process), and where
// progress goes (lean_build's [n/m] lines). Both optional.
struct ToolCallContext {
  const std::atomic<bool>* cancel = nullptr;
  std::function<void(double progress, double total, const std::string& message)> progress;
};

struct ToolsOptions {
  double lean_timeout_seconds = 300;  // one Lean request (check and queries), the pool's retry included
  std::vector<std::string> build_command = {"lake", "build"};  // lean_build, run in the project root
  double build_timeout_seconds = 3600;
  // Roots lean_local_search reads besides the project (which includes .lake/packages). Empty: the toolchain's
  // sources, `$(lean --print-prefix)/src/lean`, when `lean` is on PATH.
  std::vector<std::string> search_roots;
  size_t max_file_lines = 2000;  // read_file returns at most this many lines per call
};

class ToolBox {
 public:
  ToolBox(lsp::ServerPool& pool, WorkingCopy& copy, ToolsOptions options);

  const std::vector<ToolDefinition>& Definitions() const { return definitions_; }
  // The definitions as the LanguageModel interface takes them.
  std::vector<ToolSpec> Specs() const;

  // Runs tool `name` with `arguments_json` (a JSON object as text). Unknown tools, unparsable or schema-violating
  // arguments and every failure come back as tool errors.
  ToolOutcome Call(const std::string& name, const std::string& arguments_json, const ToolCallContext& context = {});

  // Lean checks made so far (one per document version Lean elaborated).
  long lean_checks() const { return lean_checks_.load(); }

  WorkingCopy& working_copy() { return copy_; }

 private:
  using Handler = std::function<Result<nlohmann::json>(const nlohmann::json& args, const ToolCallContext& context)>;
  void Register(const char* name, const char* description, nlohmann::json schema, Handler handler);
  void RegisterLeanTools();
  void RegisterRepositoryTools();
  // The file a Lean tool names (`file_path`), resolved, and its working-copy text.
  Result<std::pair<std::string, std::string>> LeanFile(const nlohmann::json& args) const;
  // Checks `text` as `path` on the pool, then runs `query` on the same server (lsp::ServerPool::CheckThen).
  Result<lsp::CheckResult> CheckThen(const std::string& path, const std::string& text,
                                     const lsp::ServerPool::DocumentQuery& query);
  std::vector<std::string> SearchRoots();

  lsp::ServerPool& pool_;
  WorkingCopy& copy_;
  ToolsOptions options_;
  std::vector<ToolDefinition> definitions_;
  std::vector<Handler> handlers_;  // parallel to definitions_
  std::atomic<long> lean_checks_{0};
  std::atomic<long> scratch_counter_{0};
  std::mutex roots_mu_;
  bool roots_known_ = false;               // guarded by roots_mu_
  std::vector<std::string> search_roots_;  // guarded by roots_mu_
};

// Checks `arguments` against a tool's input schema (object; required properties; property types string, integer,
// boolean, array of strings; minimum; no properties the schema does not name). kInvalidArgument naming the field.
Status ValidateArguments(const nlohmann::json& schema, const nlohmann::json& arguments);

}  // namespace lr::agent
