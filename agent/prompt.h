// Prompts for one theorem, repair turns, and reading a proof back out of the model's reply.
//
// Two prompt styles, one per kind of model:
//  - kChat (instruction-tuned models, Leanstral-class): a system message and a user message with the theorem in a
//    ```lean block; the model answers with the whole theorem in a ```lean block. The model backend renders the
//    messages in the model's own chat format (Mistral's [INST]/[AVAILABLE_TOOLS] for Leanstral, the GGUF template for
//    local models). A repair turn appends the candidate's reply and a user message with Lean's errors and goals.
//  - kCompletion (base prover models, DeepSeek-Prover style): one assistant message holding the Lean code up to the
//    start of the proof, sent with continue_final_message, so the model writes the proof itself and closes the block.
//    A repair turn appends the candidate, Lean's errors as a Lean comment, and the statement again.
//  - kTools (tool-calling models, Leanstral-class): the chat prompt with one tool offered, `check_proof` {code}: the
//    model sends the complete theorem to Lean itself. The call's code is the candidate; a rejected call is answered
//    with a tool message holding Lean's errors and goals, and the model goes on from there (a repair turn). A reply
//    without a call is read as in kChat.
// Either way the k candidates share the whole prompt, which the backends prefill once (local forks, remote prefix
// caching), and a repair turn extends its own candidate's conversation, so its prefix is cached too.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "agent/task.h"
#include "lm/language_model.h"

namespace lr::agent {

// kAgent: no prompt of this file; the agent loop (agent_loop.h) works inside the project with the full tool set.
enum class PromptStyle { kChat, kCompletion, kTools, kAgent };

// "chat", "completion", "tools" or "agent"; kInvalidArgument otherwise.
Result<PromptStyle> ParsePromptStyle(std::string_view name);

// The conversation that asks for a proof of `task`.
std::vector<ChatMessage> FirstPrompt(const ProofTask& task, PromptStyle style);

// What a repair turn tells the model about its candidate: Lean's errors (or the guard's refusal) and the goals.
struct Feedback {
  std::string errors;  // one line per message, "line N: message", lines counted from the statement's first line
  std::string goals;   // the open goals at the errors, as Lean printed them; may be empty
};

// The tool offered in kTools style: `check_proof` with one string argument, `code`, the complete theorem.
ToolSpec CheckProofTool();

// Extends `conversation` (the candidate's own) with its `reply` and the feedback, asking for a fixed proof. kTools:
// when the reply called check_proof, the feedback is that call's result (a "tool" message).
void AppendRepairTurn(std::vector<ChatMessage>* conversation, PromptStyle style, const ProofTask& task,
                      const Choice& reply, const Feedback& feedback);

// What the model's reply offers as the proof of `task`: the text to put after the statement's `:=`.
struct Extracted {
  bool found = false;
  std::string proof;    // when found
  std::string problem;  // when not found: why ("no ```lean block", "the statement was changed")
};

// Reads the proof from `reply`. kChat: the last ```lean / ```lean4 block (a closed one, or an unclosed one at the
// end); a block holding the task's theorem gives that theorem's proof (refused if its statement differs), a block of
// bare tactics becomes `by` + those tactics. kCompletion: the reply continues the prompt's proof start up to the
// closing fence. kTools reads text as kChat.
Extracted ExtractProof(std::string_view reply, PromptStyle style, const ProofTask& task);

// Reads the proof from a whole reply: in kTools style the code of its last check_proof call (read as a ```lean
// block; a call whose arguments are not a JSON object with a string `code` is a problem), else its text as above.
Extracted ExtractProof(const Choice& reply, PromptStyle style, const ProofTask& task);

}  // namespace lr::agent
