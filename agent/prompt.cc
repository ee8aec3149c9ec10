#include "agent/prompt.h"

#include <nlohmann/json.hpp>

#include "lsp/lean_text.h"

namespace lr::agent {
namespace {

constexpr std::string_view kSystem =
    "You are an expert in Lean 4 and Mathlib. You write complete, formal proofs that Lean accepts. "
    "Keep the theorem statement exactly as given and replace only its proof. Never use sorry, admit, axiom, "
    "native_decide or #eval. Answer with the complete theorem in one ```lean block.";

constexpr std::string_view kToolsSystem =
    "You are an expert in Lean 4 and Mathlib. You write complete, formal proofs that Lean accepts. "
    "Keep the theorem statement exactly as given and replace only its proof. Never use sorry, admit, axiom, "
    "native_decide or #eval. Call the check_proof tool with the complete theorem to have Lean check it; when Lean "
    "rejects it, fix the proof and call check_proof again.";

constexpr char kCheckProof[] = "check_proof";

// The proof start a completion prompt ends with; the model writes the tactics that follow.
constexpr std::string_view kCompletionProofStart = " by\n";

std::string CompletionCode(const ProofTask& task) {
  return "Complete the following Lean 4 code:\n\n```lean4\n" + task.preamble + task.statement +
         std::string(kCompletionProofStart);
}

bool IsSorryProof(std::string_view proof) {
  std::string normalized = lsp::NormalizeWhitespace(lsp::MaskCommentsAndStrings(proof));
  return normalized == "sorry" || normalized == "by sorry";
}

struct Block {
  std::string_view lang;
  std::string_view body;
};

std::vector<Block> FencedBlocks(std::string_view text) {
  std::vector<Block> blocks;
  size_t pos = text.find("```");
  while (pos != std::string_view::npos) {
    size_t line_end = text.find('\n', pos);
    if (line_end == std::string_view::npos) break;
    Block b;
    b.lang = text.substr(pos + 3, line_end - pos - 3);
    while (!b.lang.empty() && (b.lang.back() == ' ' || b.lang.back() == '\r')) b.lang.remove_suffix(1);
    size_t close = text.find("```", line_end + 1);
    b.body = text.substr(line_end + 1, close == std::string_view::npos ? std::string_view::npos : close - line_end - 1);
    blocks.push_back(b);
    pos = (close == std::string_view::npos) ? close : text.find("```", close + 3);
  }
  return blocks;
}

std::string TrimRight(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return std::string(s);
}

// `by` + the tactics of `body`, indented two spaces, unless `body` is already a `by` block or a term.
std::string ProofFromTactics(std::string_view body) {
  std::string trimmed = TrimRight(body);
  std::string words = lsp::NormalizeWhitespace(lsp::MaskCommentsAndStrings(trimmed));
  if (words == "by" || words.rfind("by ", 0) == 0) {
    std::string out(1, ' ');
    out.append(trimmed, trimmed.find_first_not_of(" \t\n"));
    return out;
  }
  std::string out(kCompletionProofStart);
  size_t start = 0;
  while (start < trimmed.size()) {
    size_t end = trimmed.find('\n', start);
    if (end == std::string::npos) end = trimmed.size();
    std::string_view line(trimmed.data() + start, end - start);
    if (!line.empty()) out += "  " + std::string(line);
    out += '\n';
    start = end + 1;
  }
  return TrimRight(out);
}

}  // namespace

Result<PromptStyle> ParsePromptStyle(std::string_view name) {
  if (name == "chat") return PromptStyle::kChat;
  if (name == "completion") return PromptStyle::kCompletion;
  if (name == "tools") return PromptStyle::kTools;
  if (name == "agent") return PromptStyle::kAgent;
  return InvalidArgument("prompt style '" + std::string(name) + "': expected 'chat', 'completion', 'tools' or 'agent'");
}

std::vector<ChatMessage> FirstPrompt(const ProofTask& task, PromptStyle style) {
  if (style == PromptStyle::kCompletion) return {{"assistant", CompletionCode(task), {}, ""}};
  std::string user = "Prove the following Lean 4 theorem.\n\n```lean\n" + task.preamble + task.statement;
  if (IsSorryProof(task.proof)) {
    user += " by\n  sorry\n```\n";
  } else {
    user += task.proof + "\n```\n\nThe proof above is broken; repair it.\n";
  }
  const std::string_view system = style == PromptStyle::kTools ? kToolsSystem : kSystem;
  return {{"system", std::string(system), {}, ""}, {"user", user, {}, ""}};
}

ToolSpec CheckProofTool() {
  return {kCheckProof,
          "Checks a Lean 4 theorem with Lean. Returns Lean's errors and the open goals, or says the proof is accepted.",
          R"({"type": "object", "properties": {"code": {"type": "string", "description": )"
          R"("the complete theorem, statement unchanged, with its proof"}}, "required": ["code"]})"};
}

namespace {

// The last check_proof call of a reply, or null.
const ToolCall* LastCheckProofCall(const Choice& reply) {
  for (auto it = reply.tool_calls.rbegin(); it != reply.tool_calls.rend(); ++it)
    if (it->name == kCheckProof) return &*it;
  return nullptr;
}

}  // namespace

Extracted ExtractProof(const Choice& reply, PromptStyle style, const ProofTask& task) {
  const ToolCall* call = style == PromptStyle::kTools ? LastCheckProofCall(reply) : nullptr;
  if (call == nullptr) return ExtractProof(reply.text, style, task);
  const nlohmann::json args = nlohmann::json::parse(call->arguments_json, nullptr, /*allow_exceptions=*/false);
  if (!args.is_object() || !args.contains("code") || !args["code"].is_string()) {
    Extracted out;
    out.problem = "the check_proof call's arguments are not a JSON object with a string `code`: " +
                  call->arguments_json.substr(0, 200);
    return out;
  }
  return ExtractProof("```lean\n" + args["code"].get<std::string>() + "\n```", PromptStyle::kChat, task);
}

void AppendRepairTurn(std::vector<ChatMessage>* conversation, PromptStyle style, const ProofTask& task,
                      const Choice& reply, const Feedback& feedback) {
  if (style == PromptStyle::kCompletion) {
    // The conversation is one assistant message the model continues.
    std::string& code = conversation->back().content;
    code += TrimRight(reply.text) + "\n```\n\nLean 4 rejected this proof:\n/-\n" + feedback.errors;
    if (!feedback.goals.empty()) code += "\nUnsolved goals:\n" + feedback.goals;
    code += "\n-/\n\nComplete the following Lean 4 code with a corrected proof:\n\n```lean4\n" + task.statement +
            std::string(kCompletionProofStart);
    return;
  }
  const ToolCall* call = style == PromptStyle::kTools ? LastCheckProofCall(reply) : nullptr;
  if (call != nullptr) {
    std::string result = "Lean rejected this proof:\n" + feedback.errors + "\n";
    if (!feedback.goals.empty()) result += "\nGoals at the errors:\n" + feedback.goals + "\n";
    conversation->push_back({"assistant", reply.text, {*call}, ""});
    conversation->push_back({"tool", result, {}, call->id});
    return;
  }
  conversation->push_back({"assistant", reply.text, {}, ""});
  std::string user = "Lean rejected this proof:\n" + feedback.errors + "\n";
  if (!feedback.goals.empty()) user += "\nGoals at the errors:\n```\n" + feedback.goals + "\n```\n";
  user += "\nFix the proof. Answer with the complete theorem, statement unchanged, in one ```lean block.";
  conversation->push_back({"user", user, {}, ""});
}

Extracted ExtractProof(std::string_view reply, PromptStyle style, const ProofTask& task) {
  Extracted out;
  if (style == PromptStyle::kCompletion) {
    std::string_view body = reply.substr(0, reply.find("```"));
    if (lsp::NormalizeWhitespace(body).empty()) {
      out.problem = "the reply holds no proof";
      return out;
    }
    out.found = true;
    out.proof = TrimRight(std::string(kCompletionProofStart) + std::string(body));
    return out;
  }
  std::vector<Block> blocks = FencedBlocks(reply);
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    if (it->lang != "lean" && it->lang != "lean4" && !it->lang.empty()) continue;
    if (lsp::NormalizeWhitespace(it->body).empty()) continue;
    std::vector<lsp::Declaration> decls = lsp::FindDeclarations(it->body);
    if (decls.empty()) {
      out.found = true;
      out.proof = ProofFromTactics(it->body);
      return out;
    }
    for (const lsp::Declaration& d : decls) {
      if (d.name != task.name) continue;
      if (!lsp::SameStatement(d.Header(it->body), task.statement)) {
        out.problem = "the reply changes the statement of `" + task.name + "`";
        return out;
      }
      out.found = true;
      out.proof = TrimRight(d.Proof(it->body));
      return out;
    }
    out.problem = "the reply's ```lean block does not contain the theorem `" + task.name + "`";
    return out;
  }
  out.problem = "the reply holds no ```lean block";
  return out;
}

}  // namespace lr::agent
